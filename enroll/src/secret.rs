//! The enrollment token: redacted in `Debug`, no `Display`, no `Serialize`; zeroed on drop.

pub struct Token(String);

impl Token {
    pub fn new(s: String) -> Token {
        Token(s)
    }

    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        // Overwrite in place; `String::clear` alone would leave the bytes.
        let len = self.0.len();
        self.0.clear();
        self.0.extend(std::iter::repeat_n('\0', len));
        std::hint::black_box(&self.0);
    }
}
