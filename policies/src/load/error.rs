//! Load errors, each pointing at a file, line and column.

use std::fmt;

/// One problem in one policy file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct LoadError {
    /// The source name given by the caller (usually the file name).
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

/// Every problem found while loading a policy (never empty when returned as an error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadErrors(pub Vec<LoadError>);

impl fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadErrors {}

/// A position in a file, resolved from a byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    /// Resolves a byte offset (clamped into the text) to a 1-based line and column.
    pub(crate) fn at(text: &str, offset: usize) -> Pos {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = text.get(..offset).unwrap_or("");
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Pos {
            line: before.matches('\n').count() + 1,
            column: before.get(line_start..).unwrap_or("").chars().count() + 1,
        }
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

#[cfg(test)]
mod tests {
    use super::Pos;

    #[test]
    fn positions_are_one_based_and_count_chars() {
        let t = "ab\ncdé\nf";
        assert_eq!(Pos::at(t, 0), Pos { line: 1, column: 1 });
        assert_eq!(Pos::at(t, 2), Pos { line: 1, column: 3 });
        assert_eq!(Pos::at(t, 3), Pos { line: 2, column: 1 });
        // 'é' is two bytes; offset 8 is the 'f' after the second newline.
        assert_eq!(Pos::at(t, 8), Pos { line: 3, column: 1 });
        assert_eq!(Pos::at(t, 6), Pos { line: 2, column: 3 });
        assert_eq!(Pos::at(t, 7), Pos { line: 2, column: 4 });
        assert_eq!(Pos::at(t, 1000), Pos { line: 3, column: 2 });
    }
}
