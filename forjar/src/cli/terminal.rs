//! What reaches a terminal: text from a build (its log) or from a user (names, paths) may hold
//! control sequences that would move the cursor, retitle the window, set the clipboard or worse
//! (OSC 52, OSC 2, CSI ...). Everything forjar prints passes through [`sanitise`], which shows
//! each control character as an escape instead of sending it.
//!
//! Colour is forjar's own, added after sanitising, to the parts of a line forjar wrote (a plan's
//! status word, the `+`/`-`/`~` of a change, `error:`), never inside a name or a log line. It
//! is on when the stream is a terminal whose `TERM` is not `dumb`; `NO_COLOR` (set and not
//! empty) turns it off and `CLICOLOR_FORCE` (not `0`) on, and `--color` overrides both.

use std::borrow::Cow;
use std::fmt::Write;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU8, Ordering};

use anstyle::{AnsiColor, Style};

/// `--color`: 0 auto, 1 always, 2 never.
static CHOICE: AtomicU8 = AtomicU8::new(0);

/// Records `--color`.
pub(crate) fn set_colour_choice(choice: clap::ColorChoice) {
    let value = match choice {
        clap::ColorChoice::Auto => 0,
        clap::ColorChoice::Always => 1,
        clap::ColorChoice::Never => 2,
    };
    CHOICE.store(value, Ordering::Relaxed);
}

/// Whether to colour what goes to a stream that is a terminal or not.
pub(crate) fn colour(is_terminal: bool) -> bool {
    match CHOICE.load(Ordering::Relaxed) {
        1 => return true,
        2 => return false,
        _ => {}
    }
    let set = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if set("NO_COLOR").is_some() {
        return false;
    }
    if set("CLICOLOR_FORCE").is_some_and(|v| v != "0") {
        return true;
    }
    is_terminal && std::env::var_os("TERM").is_none_or(|t| t != "dumb")
}

/// Whether standard error gets colour.
pub(crate) fn colour_stderr() -> bool {
    colour(std::io::stderr().is_terminal())
}

/// The clap colour choice that matches ours, for `--help` and usage errors.
pub(crate) fn clap_choice() -> clap::ColorChoice {
    match CHOICE.load(Ordering::Relaxed) {
        1 => clap::ColorChoice::Always,
        2 => clap::ColorChoice::Never,
        _ if colour_stderr() => clap::ColorChoice::Always,
        _ => clap::ColorChoice::Never,
    }
}

/// `text` in `style`.
pub(crate) fn paint(style: Style, text: &str) -> String {
    format!("{style}{text}{style:#}")
}

/// The style of a message's prefix: `error`, `warning`, `note`.
pub(crate) fn prefix_style(prefix: &str) -> Style {
    let colour = match prefix {
        "error" => AnsiColor::Red,
        "warning" => AnsiColor::Yellow,
        _ => AnsiColor::Cyan,
    };
    Style::new().fg_color(Some(colour.into())).bold()
}

/// A message for standard error, `prefix: text`, the prefix coloured when standard error is.
pub(crate) fn message(prefix: &str, text: &str) -> String {
    let text = sanitise(text);
    match colour_stderr() {
        true => format!(
            "{} {text}",
            paint(prefix_style(prefix), &format!("{prefix}:"))
        ),
        false => format!("{prefix}: {text}"),
    }
}

/// Colours the parts forjar wrote of a plan or a list of changes, line by line: a leading
/// status word (`build`, `cached`, `import`, `unneeded`) and a leading `+`, `-` or `~` with the
/// rest of its line. `text` is already sanitised.
pub(crate) fn paint_changes(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    for line in text.split_inclusive('\n') {
        let body = line.trim_start();
        let indent = &line[..line.len() - body.len()];
        let (content, newline) = match body.strip_suffix('\n') {
            Some(content) => (content, "\n"),
            None => (body, ""),
        };
        let word = content.split(' ').next().unwrap_or("");
        let status = match word.trim_end_matches('*') {
            "build" => Some(AnsiColor::Yellow),
            "cached" => Some(AnsiColor::Green),
            "import" => Some(AnsiColor::Cyan),
            "unneeded" => Some(AnsiColor::BrightBlack),
            _ => None,
        };
        let change = match word {
            "+" => Some(AnsiColor::Green),
            "-" => Some(AnsiColor::Red),
            "~" => Some(AnsiColor::Yellow),
            _ => None,
        };
        out.push_str(indent);
        match (status, change) {
            (Some(colour), _) => {
                let style = Style::new().fg_color(Some(colour.into()));
                out.push_str(&paint(style, word));
                out.push_str(&content[word.len()..]);
            }
            (None, Some(colour)) => {
                out.push_str(&paint(Style::new().fg_color(Some(colour.into())), content));
            }
            (None, None) => out.push_str(content),
        }
        out.push_str(newline);
    }
    out
}

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
    fn colour_marks_status_words_and_changes_and_nothing_else() {
        let painted = paint_changes("build   a  x.rs:1\n  + b (1 KiB)\nplain - text\n");
        assert_eq!(
            painted,
            "\x1b[33mbuild\x1b[0m   a  x.rs:1\n  \x1b[32m+ b (1 KiB)\x1b[0m\nplain - text\n"
        );
    }

    #[test]
    fn control_sequences_are_shown_not_sent() {
        assert_eq!(sanitise("plain\ttext\n"), "plain\ttext\n");
        assert_eq!(
            sanitise("\x1b]52;c;aGk=\x07title\x1b[2J\r\u{9b}31m"),
            "\\x1b]52;c;aGk=\\x07title\\x1b[2J\\x0d\\u{9b}31m"
        );
    }
}
