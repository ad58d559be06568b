//! The crate's one error type. Messages name the command, the line and the field, never the
//! peer's text, so they are safe to log and to show an operator.

use std::fmt;

/// Which discovery command's output was being parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    DmiSystem,
    DmiChassis,
    IpLink,
    Ethtool,
    EthtoolDriver,
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Command::DmiSystem => "dmidecode -t 1",
            Command::DmiChassis => "dmidecode -t 3",
            Command::IpLink => "ip -o link",
            Command::Ethtool => "ethtool",
            Command::EthtoolDriver => "ethtool -i",
        })
    }
}

/// Why captured output was refused. Lines are 1-based.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("{command}: output is {len} bytes, over the {max}-byte limit")]
    TooLarge { command: Command, len: usize, max: usize },
    #[error("{command}: output is not UTF-8 (first bad byte at offset {offset})")]
    NotUtf8 { command: Command, offset: usize },
    #[error("{command} line {line}: control character; this is not command output")]
    ControlCharacter { command: Command, line: usize },
    #[error("{command}: output is empty")]
    Empty { command: Command },
    #[error("{command}: no `{header}` section")]
    MissingSection { command: Command, header: &'static str },
    #[error("{command}: no `{field}` line")]
    MissingField { command: Command, field: &'static str },
    #[error("{command} line {line}: {reason}")]
    Malformed { command: Command, line: usize, reason: &'static str },
    #[error("{command} line {line}: `{field}` is longer than {max} bytes")]
    FieldTooLong { command: Command, line: usize, field: &'static str, max: usize },
    #[error("{command} line {line}: `{field}` appears twice")]
    DuplicateField { command: Command, line: usize, field: &'static str },
    #[error("{command} line {line}: `{field}` has an invalid value")]
    InvalidValue { command: Command, line: usize, field: &'static str },
    #[error("{command}: more than {max} interfaces")]
    TooManyInterfaces { command: Command, max: usize },
    // Interface names are validated (short, printable ASCII) before they reach an error.
    #[error("{command} line {line}: interface `{name}` is listed twice")]
    DuplicateInterface { command: Command, line: usize, name: String },
    #[error("{command}: output is for another interface than `{expected}`")]
    InterfaceMismatch { command: Command, expected: String },
    #[error("{command}: interface `{name}` is not in the `ip -o link` output")]
    UnknownInterface { command: Command, name: String },
}
