//! What reaches a terminal: text from a build (its log) or from a user (names, paths) may hold
//! control sequences that would move the cursor, retitle the window, set the clipboard or worse
//! (OSC 52, OSC 2, CSI ...). Everything forjar prints passes through [`sanitise`], which shows
//! each control character as an escape instead of sending it.

use std::borrow::Cow;
use std::fmt::Write;

/// `text` with every control character but newline and tab written as an escape (`\x1b`,
/// `\u{9b}`), so that a terminal shows it rather than obeys it.
pub(crate) fn sanitise(text: &str) -> Cow<'_, str> {
    let is_control = |c: char| c.is_control() && c != '\n' && c != '\t';
    if !text.contains(is_control) {
        return Cow::Borrowed(text);
    }
    let mut clean = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if !is_control(c) {
            clean.push(c);
        } else if (c as u32) < 0x80 {
            let _ = write!(clean, "\\x{:02x}", c as u32);
        } else {
            let _ = write!(clean, "\\u{{{:x}}}", c as u32);
        }
    }
    Cow::Owned(clean)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_sequences_are_shown_not_sent() {
        assert_eq!(sanitise("plain\ttext\n"), "plain\ttext\n");
        assert_eq!(
            sanitise("\x1b]52;c;aGk=\x07title\x1b[2J\r\u{9b}31m"),
            "\\x1b]52;c;aGk=\\x07title\\x1b[2J\\x0d\\u{9b}31m"
        );
    }
}
