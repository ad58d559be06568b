//! The enrollment token is a `secrecy::SecretString` (the type every secret of the project
//! uses): redacted in `Debug`, no `Display`, no `Serialize`, zeroed on drop; read only
//! through `expose_secret`, where the request to the CA needs it.

pub use secrecy::{ExposeSecret, SecretString as Token};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_never_prints() {
        let token = Token::from("pet_canary-0123456789".to_owned());
        assert!(!format!("{token:?}").contains("canary"));
        assert_eq!(token.expose_secret(), "pet_canary-0123456789");
    }
}
