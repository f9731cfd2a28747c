//! The configuration error: one line, `file:line: what is wrong`, by cause.

/// A configuration problem, as one line: `file:line: what is wrong` (or `file: …` when no one
/// line is at fault). An invalid file stops start-up; the vault never starts half-configured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read (`file: cannot read: reason`).
    Unreadable { file: String, reason: String },
    /// The text is not the file format: TOML syntax, an unknown key, a value of the wrong
    /// type (`file:line: message`, the message as TOML gives it).
    Format { file: String, line: usize, message: String },
    /// A value at this line breaks a rule (`file:line: rule`).
    Invalid { file: String, line: usize, rule: String },
    /// A rule about the file as a whole: a required key missing, a value out of range, two
    /// keys that clash (`file: rule`).
    Rule { file: String, rule: String },
    /// A `QOIMA_…` environment override is malformed.
    Environment { rule: String },
    /// The development default could not create or read its files under `.qoima-dev/`.
    DevSetup { reason: String },
}

impl ConfigError {
    fn text(&self) -> String {
        match self {
            ConfigError::Unreadable { file, reason } => format!("{file}: cannot read: {reason}"),
            ConfigError::Format { file, line, message } => format!("{file}:{line}: {message}"),
            ConfigError::Invalid { file, line, rule } => format!("{file}:{line}: {rule}"),
            ConfigError::Rule { file, rule } => format!("{file}: {rule}"),
            ConfigError::Environment { rule } => rule.clone(),
            ConfigError::DevSetup { reason } => reason.clone(),
        }
    }
}

impl std::fmt::Display for ConfigError {
    /// Messages quote the file's own text (names, paths), which may hold a newline or a
    /// terminal escape; printing those as escapes keeps the error one line and inert.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        for c in self.text().chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

/// The line (from 1) of a byte offset.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|b| *b == b'\n').count() + 1
}

/// The text being parsed and its name, so a section parser's error names the file and line.
#[derive(Clone, Copy)]
pub(super) struct Source<'a> {
    pub name: &'a str,
    pub text: &'a str,
}

impl Source<'_> {
    /// A rule broken by the value at byte `offset`.
    pub fn at(&self, offset: usize, rule: impl Into<String>) -> ConfigError {
        ConfigError::Invalid { file: self.name.to_string(), line: line_of(self.text, offset), rule: rule.into() }
    }

    /// A rule about the file as a whole.
    pub fn rule(&self, rule: impl Into<String>) -> ConfigError {
        ConfigError::Rule { file: self.name.to_string(), rule: rule.into() }
    }
}
