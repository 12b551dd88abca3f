//! Reads a derivation's shell script the way `/bin/sh` will, far enough to know which variables
//! it expands, which it assigns, and which constructs make its output differ run to run.
//!
//! Scripts run under `sh -eu`, so expanding a variable that is not set stops the build; this
//! scan finds those at compile time. It follows quoting (single, double, backslash), `${...}`
//! with its operators, `$(...)`, backquotes, `$((...))`, comments and here-documents. Where it
//! has to guess, it errs towards accepting: any `NAME=` word counts as an assignment, and a
//! `${x:-default}` expansion needs no declaration.

use std::collections::BTreeSet;

use crate::suggest::did_you_mean;

/// Variables every build has without declaring them: those the sandbox sets, and those the
/// shell sets itself.
pub const BUILTIN_VARIABLES: &[&str] = &[
    "PATH",
    "IFS",
    "PS1",
    "PS2",
    "PS4",
    "OPTIND",
    "OPTARG",
    "PPID",
    "LINENO",
    "OLDPWD",
    "REPLY",
    "SOURCE_DATE_EPOCH",
];

/// A message for each `$name` the script expands that is not `declared` (name and kind:
/// `input`, `env`, `output`, `parameter`), assigned by the script, or set by the sandbox or the
/// shell; under `sh -u` each would stop the build. One message per name, at its first use.
pub fn undeclared<N: AsRef<str>>(scan: &Scan, declared: &[(N, &str)]) -> Vec<String> {
    let mut reported: Vec<&str> = Vec::new();
    let mut messages = Vec::new();
    for (name, line) in &scan.uses {
        let known = declared.iter().any(|(d, _)| d.as_ref() == name)
            || scan.assigned.contains(name)
            || crate::RESERVED_ENV.contains(&name.as_str())
            || BUILTIN_VARIABLES.contains(&name.as_str());
        if known || reported.contains(&name.as_str()) {
            continue;
        }
        reported.push(name);
        let list = declared
            .iter()
            .map(|(d, kind)| format!("`{}` ({kind})", d.as_ref()))
            .collect::<Vec<_>>()
            .join(", ");
        let hint = did_you_mean(
            name,
            declared
                .iter()
                .map(|(d, _)| d.as_ref())
                .chain(crate::RESERVED_ENV.iter().copied()),
        );
        messages.push(format!(
            "script line {line} uses `${name}`, which is not an input, env or output{hint}; declared: {list}"
        ));
    }
    messages
}

/// A message for each construct of the script whose result differs on every run; `allow`
/// says how to allow them (`add `#[forjar(allow_impure)]``).
pub fn impure(scan: &Scan, allow: &str) -> Vec<String> {
    scan.impure
        .iter()
        .map(|(what, line)| {
            format!(
                "script line {line} uses {what}, which differs on every run; make it deterministic, or {allow}"
            )
        })
        .collect()
}

/// What a script expands, assigns, and does that is not deterministic.
#[derive(Debug, Default)]
pub struct Scan {
    /// Each `$name` that must be set, with its line (1-based, in the script).
    pub uses: Vec<(String, usize)>,
    /// Names the script sets itself (`x=`, `for x in`, `read x`, `${x:=..}`, ...).
    pub assigned: BTreeSet<String>,
    /// Non-deterministic constructs, each with its line.
    pub impure: Vec<(String, usize)>,
    /// What `/bin/sh` would refuse, or read other than as written, each with its line.
    pub errors: Vec<(String, usize)>,
}

/// Variables whose value differs on every run.
const IMPURE_VARS: &[&str] = &[
    "RANDOM",
    "SRANDOM",
    "BASHPID",
    "EPOCHSECONDS",
    "EPOCHREALTIME",
    "SECONDS",
];

/// Commands whose output differs on every run.
const IMPURE_COMMANDS: &[&str] = &["uuidgen"];

/// Devices that read randomness.
const RANDOM_DEVICES: &[&str] = &["/dev/urandom", "/dev/random"];

/// Words that keep the next word in command position.
const KEYWORDS: &[&str] = &[
    "if", "then", "else", "elif", "fi", "do", "done", "while", "until", "!", "{", "}", "time",
    "esac",
];

/// Commands whose plain-word arguments are variable names they set.
const SETTERS: &[&str] = &[
    "read", "export", "local", "readonly", "declare", "typeset", "unset",
];

/// Stands in a word for an expansion, so `"$x"` is not an empty word.
const EXPANSION: char = '\u{1}';

/// Reads `script` as `/bin/sh` will.
pub fn scan(script: &str) -> Scan {
    let mut scanner = Scanner {
        chars: script.chars().collect(),
        pos: 0,
        line: 1,
        out: Scan::default(),
        positional: None,
        has_parameters: defines_a_function(script),
    };
    scanner.code(Until::End);
    if !scanner.has_parameters
        && let Some((digit, line)) = scanner.positional
    {
        scanner.out.errors.push((
            format!(
                "uses `${digit}`, but a build's script has no positional parameters (`sh -u` \
                 stops at it); give the value as an env field or an input"
            ),
            line,
        ));
    }
    scanner.out
}

/// Whether `script` defines a shell function (`name() ...`), whose body has parameters.
fn defines_a_function(script: &str) -> bool {
    script.match_indices("()").any(|(at, _)| {
        let before = script[..at].trim_end_matches([' ', '\t']);
        before.chars().next_back().is_some_and(is_ident)
    })
}

/// A message for each part of the script `/bin/sh` would refuse or read other than as
/// written, from [`scan`].
pub fn syntax(scan: &Scan) -> Vec<String> {
    scan.errors
        .iter()
        .map(|(what, line)| format!("script line {line} {what}"))
        .collect()
}

#[derive(Clone, Copy, PartialEq)]
enum Until {
    End,
    CloseParen,
    Backquote,
}

struct Scanner {
    chars: Vec<char>,
    pos: usize,
    line: usize,
    out: Scan,
    /// The first `$1`.. expanded, with its line: unset in a script unless it defines a
    /// function or sets them (`set -- a b`).
    positional: Option<(char, usize)>,
    /// The script defines a function or runs `set`, so positional parameters may be set.
    has_parameters: bool,
}

/// The command being read in one code context.
#[derive(Default)]
struct Command {
    word: String,
    /// The word has begun (a quoted empty string is still a word).
    in_word: bool,
    /// The next word is a command name (or an assignment before one).
    at_command: bool,
    name: Option<String>,
    args: Vec<String>,
    line: usize,
    for_variable: bool,
    heredocs: Vec<Heredoc>,
    /// The compound commands open here: the word that closes each, the one that opened it,
    /// and its line.
    blocks: Vec<(&'static str, &'static str, usize)>,
}

struct Heredoc {
    /// The line of its `<<`.
    line: usize,
    delimiter: String,
    quoted: bool,
    strip_tabs: bool,
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn is_identifier(word: &str) -> bool {
    word.chars().next().is_some_and(is_ident_start) && word.chars().all(is_ident)
}

/// `NAME` of a `NAME=value` word.
fn assignment(word: &str) -> Option<&str> {
    let (name, _) = word.split_once('=')?;
    is_identifier(name).then_some(name)
}

/// Whether `date` is given a fixed time (`-d`, `--date`, `-r FILE`, `--reference`).
fn date_is_fixed(args: &[String]) -> bool {
    args.iter().any(|a| {
        a == "-d"
            || a == "-r"
            || a.starts_with("--date")
            || a.starts_with("--reference")
            || (a.starts_with("-d") && a.len() > 2)
            || (a.starts_with("-r") && a.len() > 2)
    })
}

impl Scanner {
    fn peek(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.pos + ahead).copied()
    }

    fn impure(&mut self, what: String, line: usize) {
        self.out.impure.push((what, line));
    }

    fn expand(&mut self, name: String) {
        if IMPURE_VARS.contains(&name.as_str()) {
            let line = self.line;
            self.impure(format!("`${name}`"), line);
        } else {
            self.out.uses.push((name, self.line));
        }
    }

    fn code(&mut self, until: Until) {
        let opened = self.line;
        let mut cmd = Command {
            at_command: true,
            line: self.line,
            ..Command::default()
        };
        while let Some(c) = self.peek(0) {
            match c {
                '\n' => {
                    self.end_command(&mut cmd);
                    self.pos += 1;
                    self.line += 1;
                    for heredoc in std::mem::take(&mut cmd.heredocs) {
                        self.heredoc_body(&heredoc);
                    }
                    cmd.line = self.line;
                }
                ' ' | '\t' => {
                    self.finish_word(&mut cmd);
                    self.pos += 1;
                }
                ';' | '&' | '|' | '(' => {
                    self.end_command(&mut cmd);
                    self.pos += 1;
                }
                ')' => {
                    self.end_command(&mut cmd);
                    self.pos += 1;
                    if until == Until::CloseParen {
                        return;
                    }
                }
                '`' => {
                    self.pos += 1;
                    if until == Until::Backquote {
                        self.end_command(&mut cmd);
                        return;
                    }
                    self.code(Until::Backquote);
                    cmd.push(EXPANSION);
                }
                '#' if !cmd.in_word => {
                    while self.peek(0).is_some_and(|c| c != '\n') {
                        self.pos += 1;
                    }
                }
                '\'' => {
                    self.pos += 1;
                    cmd.in_word = true;
                    let (opened, mut closed) = (self.line, false);
                    while let Some(c) = self.peek(0) {
                        self.pos += 1;
                        if c == '\'' {
                            closed = true;
                            break;
                        }
                        if c == '\n' {
                            self.line += 1;
                        }
                        cmd.word.push(c);
                    }
                    if !closed {
                        self.unclosed_quote('\'', opened);
                    }
                }
                '"' => {
                    self.pos += 1;
                    cmd.in_word = true;
                    let opened = self.line;
                    if !self.double_quoted(&mut cmd) {
                        self.unclosed_quote('"', opened);
                    }
                }
                '\\' => {
                    self.pos += 1;
                    match self.peek(0) {
                        Some('\n') => self.line += 1,
                        Some(c) => cmd.push(c),
                        None => {}
                    }
                    self.pos += 1;
                }
                '$' => {
                    self.dollar();
                    cmd.push(EXPANSION);
                }
                '<' if self.peek(1) == Some('<') && self.peek(2) != Some('<') => {
                    self.finish_word(&mut cmd);
                    self.pos += 2;
                    let heredoc = self.heredoc_start();
                    cmd.heredocs.push(heredoc);
                }
                '<' | '>' => {
                    self.finish_word(&mut cmd);
                    self.pos += 1;
                }
                c => {
                    cmd.push(c);
                    self.pos += 1;
                }
            }
        }
        self.end_command(&mut cmd);
        for heredoc in std::mem::take(&mut cmd.heredocs) {
            self.heredoc_body(&heredoc);
        }
        if let Some(&(closer, opener, line)) = cmd.blocks.first() {
            self.out.errors.push((
                format!("opens `{opener}` without a `{closer}` to close it"),
                line,
            ));
        }
        match until {
            Until::CloseParen => self
                .out
                .errors
                .push(("opens `$(` without a `)` to close it".into(), opened)),
            Until::Backquote => self.out.errors.push((
                "opens a backquote (`) without another to close it".into(),
                opened,
            )),
            Until::End => {}
        }
    }

    fn unclosed_quote(&mut self, quote: char, line: usize) {
        self.out.errors.push((
            format!(
                "opens a `{quote}` quote that is never closed, so the rest of the script is quoted"
            ),
            line,
        ));
    }

    /// After a `"`: up to the closing one; false when the script ends first.
    fn double_quoted(&mut self, cmd: &mut Command) -> bool {
        while let Some(c) = self.peek(0) {
            match c {
                '"' => {
                    self.pos += 1;
                    return true;
                }
                '\\' => {
                    if let Some(next) = self.peek(1) {
                        cmd.word.push(next);
                        if next == '\n' {
                            self.line += 1;
                        }
                    }
                    self.pos += 2;
                }
                '$' => {
                    self.dollar();
                    cmd.word.push(EXPANSION);
                }
                '`' => {
                    self.pos += 1;
                    self.code(Until::Backquote);
                    cmd.word.push(EXPANSION);
                }
                c => {
                    if c == '\n' {
                        self.line += 1;
                    }
                    cmd.word.push(c);
                    self.pos += 1;
                }
            }
        }
        false
    }

    /// At a `$`: reads the expansion that follows.
    fn dollar(&mut self) {
        match self.peek(1) {
            Some('{') => {
                self.pos += 2;
                self.braced();
            }
            Some('(') if self.peek(2) == Some('(') => {
                self.pos += 3;
                self.arithmetic();
            }
            Some('(') => {
                self.pos += 2;
                self.code(Until::CloseParen);
            }
            Some(c) if is_ident_start(c) => {
                self.pos += 1;
                let name = self.identifier();
                self.expand(name);
            }
            Some('$') => {
                let line = self.line;
                self.impure("`$$` (the process id)".into(), line);
                self.pos += 2;
            }
            Some(c) if c.is_ascii_digit() && c != '0' => {
                self.positional.get_or_insert((c, self.line));
                self.pos += 2;
            }
            Some(c) if c.is_ascii_digit() || "@*#?-!".contains(c) => self.pos += 2,
            _ => self.pos += 1,
        }
    }

    fn identifier(&mut self) -> String {
        let start = self.pos;
        while self.peek(0).is_some_and(is_ident) {
            self.pos += 1;
        }
        self.chars[start..self.pos].iter().collect()
    }

    /// After `${`: the name, its operator, and the word after it up to the matching `}`.
    fn braced(&mut self) {
        // `${#x}` is the length of x; `${!x}` is indirect.
        if matches!(self.peek(0), Some('#' | '!')) && self.peek(1).is_some_and(is_ident_start) {
            self.pos += 1;
        }
        let name = match self.peek(0) {
            Some(c) if is_ident_start(c) => Some(self.identifier()),
            Some(c) => {
                // A digit or special parameter; `${1:-x}` handles the unset case itself.
                if c.is_ascii_digit()
                    && c != '0'
                    && !matches!(
                        (self.peek(1), self.peek(2)),
                        (Some('-' | '+' | '?' | '='), _) | (Some(':'), Some('-' | '+' | '?' | '='))
                    )
                {
                    self.positional.get_or_insert((c, self.line));
                }
                self.pos += 1;
                None
            }
            None => return,
        };
        let colon = self.peek(0) == Some(':');
        let op = self.peek(usize::from(colon));
        if let Some(name) = name {
            match op {
                // Defaults and checks: the script handles the unset case itself.
                Some('-' | '+' | '?') => {}
                Some('=') => {
                    self.out.assigned.insert(name);
                }
                _ => self.expand(name),
            }
        }
        let mut depth = 0usize;
        while let Some(c) = self.peek(0) {
            match c {
                '}' if depth == 0 => {
                    self.pos += 1;
                    return;
                }
                '}' => {
                    depth -= 1;
                    self.pos += 1;
                }
                '{' => {
                    depth += 1;
                    self.pos += 1;
                }
                '$' => self.dollar(),
                '\\' => self.pos += 2,
                '\'' => {
                    self.pos += 1;
                    while self.peek(0).is_some_and(|c| c != '\'') {
                        self.pos += 1;
                    }
                    self.pos += 1;
                }
                '\n' => {
                    self.line += 1;
                    self.pos += 1;
                }
                _ => self.pos += 1,
            }
        }
    }

    /// After `$((`: up to the matching `))`. Bare names in arithmetic are not checked.
    fn arithmetic(&mut self) {
        let mut depth = 0usize;
        while let Some(c) = self.peek(0) {
            match c {
                ')' if depth == 0 && self.peek(1) == Some(')') => {
                    self.pos += 2;
                    return;
                }
                ')' => {
                    depth = depth.saturating_sub(1);
                    self.pos += 1;
                }
                '(' => {
                    depth += 1;
                    self.pos += 1;
                }
                '$' => self.dollar(),
                '\n' => {
                    self.line += 1;
                    self.pos += 1;
                }
                // A bare name is expanded too: `$((RANDOM % 6))`.
                c if is_ident_start(c) => {
                    let name = self.identifier();
                    if IMPURE_VARS.contains(&name.as_str()) {
                        let line = self.line;
                        self.impure(format!("`{name}`"), line);
                    }
                }
                c if c.is_ascii_digit() => {
                    while self.peek(0).is_some_and(is_ident) {
                        self.pos += 1;
                    }
                }
                _ => self.pos += 1,
            }
        }
    }

    /// After `<<`: the delimiter word.
    fn heredoc_start(&mut self) -> Heredoc {
        let strip_tabs = self.peek(0) == Some('-');
        if strip_tabs {
            self.pos += 1;
        }
        while matches!(self.peek(0), Some(' ' | '\t')) {
            self.pos += 1;
        }
        let mut delimiter = String::new();
        let mut quoted = false;
        while let Some(c) = self.peek(0) {
            if c.is_whitespace() || ";&|<>()".contains(c) {
                break;
            }
            if "'\"\\".contains(c) {
                quoted = true;
            } else {
                delimiter.push(c);
            }
            self.pos += 1;
        }
        Heredoc {
            line: self.line,
            delimiter,
            quoted,
            strip_tabs,
        }
    }

    /// The lines of a here-document, up to its delimiter; expansions in them are read unless
    /// the delimiter was quoted.
    fn heredoc_body(&mut self, heredoc: &Heredoc) {
        let mut indented = None;
        while self.pos < self.chars.len() {
            let end = self.chars[self.pos..]
                .iter()
                .position(|&c| c == '\n')
                .map_or(self.chars.len(), |n| self.pos + n);
            let line: String = self.chars[self.pos..end].iter().collect();
            let line = if heredoc.strip_tabs {
                line.trim_start_matches('\t')
            } else {
                &line
            };
            if line == heredoc.delimiter {
                self.pos = end;
                return;
            }
            if indented.is_none() && line.trim() == heredoc.delimiter {
                indented = Some(self.line);
            }
            if heredoc.quoted {
                self.pos = end;
            } else {
                while self.pos < self.chars.len() && self.chars[self.pos] != '\n' {
                    match self.chars[self.pos] {
                        '\\' => self.pos += 2,
                        '$' => self.dollar(),
                        '`' => {
                            self.pos += 1;
                            self.code(Until::Backquote);
                        }
                        _ => self.pos += 1,
                    }
                }
            }
            if self.pos < self.chars.len() {
                self.pos += 1;
                self.line += 1;
            }
        }
        let delimiter = &heredoc.delimiter;
        let hint = match indented {
            Some(line) => format!(
                "; line {line} has `{delimiter}` with other text around it, but the delimiter must \
                 be alone on its line (`<<-` strips leading tabs, not spaces)"
            ),
            None => format!("; end it with a line holding `{delimiter}` alone"),
        };
        self.out.errors.push((
            format!(
                "opens a here-document (`<<{delimiter}`) that is never closed, so the rest of \
                 the script is its text{hint}"
            ),
            heredoc.line,
        ));
    }

    /// A keyword in command position: opens or closes a compound command.
    fn block_word(&mut self, cmd: &mut Command, word: &str) {
        let line = self.line;
        let opens = match word {
            "if" => Some(("fi", "if")),
            "do" => Some(("done", "do")),
            "{" => Some(("}", "{")),
            _ => None,
        };
        if let Some((closer, opener)) = opens {
            cmd.blocks.push((closer, opener, line));
            return;
        }
        if !["fi", "done", "}", "esac"].contains(&word) {
            return;
        }
        match cmd.blocks.last() {
            Some((closer, _, _)) if *closer == word => {
                cmd.blocks.pop();
            }
            Some(&(closer, opener, opened)) => {
                self.out.errors.push((
                    format!("has `{word}` where `{closer}` closes the `{opener}` of line {opened}"),
                    line,
                ));
                // What is open after a mismatch is not known: one error for it.
                cmd.blocks.clear();
            }
            None => {
                let opener = match word {
                    "fi" => "an `if`",
                    "done" => "a `do`",
                    "}" => "a `{`",
                    _ => "a `case`",
                };
                self.out
                    .errors
                    .push((format!("has `{word}` without {opener} before it"), line));
            }
        }
    }

    fn finish_word(&mut self, cmd: &mut Command) {
        if !cmd.in_word {
            return;
        }
        let word = std::mem::take(&mut cmd.word);
        cmd.in_word = false;
        if let Some(device) = RANDOM_DEVICES.iter().find(|d| word.contains(*d)) {
            let line = self.line;
            self.impure(format!("`{device}`"), line);
        }
        if cmd.for_variable {
            cmd.for_variable = false;
            self.out.assigned.insert(word);
            return;
        }
        if cmd.at_command {
            if let Some(name) = assignment(&word) {
                self.out.assigned.insert(name.to_string());
            } else if KEYWORDS.contains(&word.as_str()) {
                self.block_word(cmd, &word);
            } else {
                if word == "case" {
                    cmd.blocks.push(("esac", "case", self.line));
                }
                cmd.at_command = false;
                cmd.for_variable = word == "for";
                cmd.line = self.line;
                cmd.name = Some(word);
            }
            return;
        }
        let name = cmd.name.as_deref().unwrap_or("");
        if SETTERS.contains(&name) {
            if let Some(assigned) = assignment(&word).or(is_identifier(&word).then_some(&*word)) {
                self.out.assigned.insert(assigned.to_string());
            }
        } else if name == "getopts" && cmd.args.len() == 1 && is_identifier(&word) {
            self.out.assigned.insert(word.clone());
        }
        cmd.args.push(word);
    }

    fn end_command(&mut self, cmd: &mut Command) {
        self.finish_word(cmd);
        if let Some(name) = cmd.name.take() {
            if name == "date" && !date_is_fixed(&cmd.args) {
                self.impure(
                    "`date` without a fixed time (`-d @$SOURCE_DATE_EPOCH`)".into(),
                    cmd.line,
                );
            } else if IMPURE_COMMANDS.contains(&name.as_str()) {
                self.impure(format!("`{name}`"), cmd.line);
            } else if name == "set"
                && cmd
                    .args
                    .iter()
                    .any(|a| a == "--" || !a.starts_with(['-', '+']))
            {
                // `set -- a b` (or `set a b`) sets them; `set -eu` does not.
                self.has_parameters = true;
            }
        }
        cmd.args.clear();
        cmd.at_command = true;
        cmd.for_variable = false;
    }
}

impl Command {
    fn push(&mut self, c: char) {
        self.in_word = true;
        self.word.push(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uses(script: &str) -> Vec<String> {
        scan(script).uses.into_iter().map(|(n, _)| n).collect()
    }

    fn impure(script: &str) -> Vec<String> {
        scan(script).impure.into_iter().map(|(n, _)| n).collect()
    }

    #[test]
    fn expansions_are_found_in_every_form() {
        assert_eq!(
            uses("cc $src/a.c -o \"${out}/bin\" `echo $cc` $(ls $dir) ${#len} ${x#pre}"),
            ["src", "out", "cc", "dir", "len", "x"]
        );
        assert_eq!(uses("echo $((n + $m))"), ["m"]);
    }

    #[test]
    fn quoted_and_escaped_dollars_are_not_expansions() {
        assert!(uses("echo '$x' \\$y \"\\$z\" # $comment").is_empty());
    }

    #[test]
    fn defaults_need_no_declaration_and_assignments_declare() {
        assert!(uses("echo ${DEBUG:-} ${v-x} ${w:+y} ${z:?unset}").is_empty());
        let scan = scan("a=1; for f in x; do :; done; read -r l; export E=1; : ${d:=2}");
        assert_eq!(
            scan.assigned.into_iter().collect::<Vec<_>>(),
            ["E", "a", "d", "f", "l"]
        );
    }

    #[test]
    fn lines_are_counted_across_quotes_and_continuations() {
        let scan = scan("echo 'a\nb' \\\n \"c\nd\"\necho $x");
        assert_eq!(scan.uses, [("x".to_string(), 5)]);
    }

    #[test]
    fn heredocs_expand_unless_their_delimiter_is_quoted() {
        assert_eq!(
            uses("cat > f <<EOF\n$a ${b}\nEOF\necho $c"),
            ["a", "b", "c"]
        );
        assert_eq!(uses("cat > f <<'EOF'\n$a\nEOF\necho $c"), ["c"]);
        assert_eq!(uses("cat <<-EOF\n\t$a\n\tEOF\n"), ["a"]);
    }

    #[test]
    fn nondeterminism_is_named() {
        assert_eq!(impure("echo $RANDOM"), ["`$RANDOM`"]);
        assert_eq!(impure("echo $$ > $out"), ["`$$` (the process id)"]);
        assert_eq!(
            impure("x=$(date +%s)"),
            ["`date` without a fixed time (`-d @$SOURCE_DATE_EPOCH`)"]
        );
        assert_eq!(impure("head -c 8 </dev/urandom"), ["`/dev/urandom`"]);
        assert!(impure("date -d @0 +%F; date --date=@1; date -r $src; echo date").is_empty());
        assert_eq!(impure("date +%Y | cat"), impure("date"));
    }

    #[test]
    fn what_sh_would_read_otherwise_is_an_error_on_its_line() {
        let errors = |script: &str| syntax(&scan(script));
        let unclosed = errors("echo start\ncat > $out <<EOF\n  text\n  EOF\necho more\n");
        assert_eq!(unclosed.len(), 1, "{unclosed:?}");
        assert!(
            unclosed[0].starts_with(
                "script line 2 opens a here-document (`<<EOF`) that is never closed, so the rest \
                 of the script is its text; line 4 has `EOF` with other text around it"
            ),
            "{unclosed:?}"
        );
        assert!(errors("cat > $out <<EOF\ntext\nEOF\n").is_empty());
        assert!(errors("cat > $out <<-EOF\n\ttext\n\tEOF\n").is_empty());
        assert_eq!(
            errors("echo $out\ncp $1 $out\n"),
            [
                "script line 2 uses `$1`, but a build's script has no positional parameters \
              (`sh -u` stops at it); give the value as an env field or an input"
            ]
        );
        assert_eq!(errors("echo ${2} > $out").len(), 1);
        assert!(errors("echo ${1:-none} > $out").is_empty());
        assert!(errors("f() { echo $1; }\nf x > $out").is_empty());
        assert!(errors("set -- a b\necho $1 > $out").is_empty());
        assert_eq!(errors("set -eu\necho $1 > $out").len(), 1);
        assert!(errors("echo $0 $# $@ > $out").is_empty());
    }

    #[test]
    fn names_in_arithmetic_are_read_for_impurity() {
        let scan = scan("echo $((RANDOM % 6)) $(( SECONDS + 1 )) $((n + 1)) > $out");
        let impure: Vec<&str> = scan.impure.iter().map(|(w, _)| w.as_str()).collect();
        assert_eq!(impure, ["`RANDOM`", "`SECONDS`"]);
        assert!(scan.uses.iter().all(|(n, _)| n == "out"), "{:?}", scan.uses);
    }

    #[test]
    fn unclosed_quotes_substitutions_and_compound_commands_are_named() {
        let errors = |script: &str| syntax(&scan(script));
        assert_eq!(
            errors("echo hi\nif [ -n x ]; then\n  echo > $out\n"),
            ["script line 2 opens `if` without a `fi` to close it"]
        );
        assert_eq!(
            errors("echo 'it is > $out"),
            [
                "script line 1 opens a `'` quote that is never closed, so the rest of the script is quoted"
            ]
        );
        assert_eq!(errors("echo \"it is > $out").len(), 1);
        assert_eq!(
            errors("echo $(cat $out\n"),
            ["script line 1 opens `$(` without a `)` to close it"]
        );
        assert_eq!(
            errors("echo > $out\nfi\n"),
            ["script line 2 has `fi` without an `if` before it"]
        );
        assert_eq!(
            errors("while true; do\n  if x; then y; done\n"),
            ["script line 2 has `done` where `fi` closes the `if` of line 2"]
        );
        for fine in [
            "for f in a b; do echo $f; done > $out",
            "case x in a) echo a;; b|c) echo b;; esac > $out",
            "{ echo a; echo b; } > $out",
            "while true; do if x; then y; elif z; then w; else v; fi; done",
            "f() { echo $1; }\nf x > $out",
            "cat > $out <<EOF\nif this is text, fi\nEOF\n",
            "echo 'it''s' \"a \\\"quote\\\"\" > $out",
            "echo fi done esac > $out",
            "x=$(if true; then echo a; fi); echo $x > $out",
        ] {
            assert!(errors(fine).is_empty(), "{fine:?}: {:?}", errors(fine));
        }
    }
}
