//! Hand-written parser for the SRQL subset. Every refusal carries the byte offset of the
//! offending character so the policy loader can point at file:line:col.

use super::{Filter, Key, QueryError, TargetQuery};

/// Characters that end or structure a value and therefore cannot appear in a bare one.
const STRUCTURAL: &[char] = &['"', '(', ')', ','];

const KEYS: &str = "name, ip, type, vendor, source, agent, gateway, partition, tags.<k>, metadata.<k>";

/// Whether `v` can be written without quotes (and so `Display` may print it bare).
pub(super) fn is_bare(v: &str) -> bool {
    !v.is_empty() && v.chars().all(bare_char)
}

fn bare_char(c: char) -> bool {
    !c.is_whitespace() && !c.is_control() && !STRUCTURAL.contains(&c)
}

fn key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

struct Parser<'a> {
    s: &'a str,
    pos: usize,
}

type Res<T> = Result<T, QueryError>;

fn err<T>(offset: usize, message: impl Into<String>) -> Res<T> {
    Err(QueryError { offset, message: message.into() })
}

impl<'a> Parser<'a> {
    fn rest(&self) -> &'a str {
        self.s.get(self.pos..).unwrap_or("")
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn take_while(&mut self, pred: impl Fn(char) -> bool) -> &'a str {
        let rest = self.rest();
        let len = rest.find(|c| !pred(c)).unwrap_or(rest.len());
        self.pos += len;
        rest.get(..len).unwrap_or("")
    }

    /// Skips whitespace; returns whether there was any.
    fn skip_ws(&mut self) -> bool {
        !self.take_while(char::is_whitespace).is_empty()
    }

    fn query(&mut self) -> Res<TargetQuery> {
        self.skip_ws();
        let start = self.pos;
        if !self.rest().starts_with("in:") {
            return err(start, "a target query must start with `in:devices`");
        }
        self.pos += 3;
        let entity_at = self.pos;
        let entity = self.take_while(|c| !c.is_whitespace());
        if entity != "devices" {
            return err(entity_at, "only `in:devices` is supported");
        }
        let mut filters = Vec::new();
        while self.skip_ws() && self.peek().is_some() {
            filters.push(self.filter()?);
        }
        if let Some(c) = self.peek() {
            // Only reachable right after `in:devices`, which stops at whitespace; kept so
            // the loop's exit condition is obviously total.
            return err(self.pos, format!("unexpected `{c}`"));
        }
        if !filters.iter().any(|f| !f.negated) {
            return err(
                self.s.len(),
                "a target query needs at least one positive filter (bare `in:devices` or only \
                 negations would select every device)",
            );
        }
        Ok(TargetQuery { filters })
    }

    fn filter(&mut self) -> Res<Filter> {
        let start = self.pos;
        let negated = self.peek() == Some('!');
        if negated {
            self.bump();
        }
        let key_at = self.pos;
        let raw_key = self.take_while(key_char);
        match self.peek() {
            Some(':') => {}
            Some(c) if !c.is_whitespace() => {
                return err(self.pos, format!("invalid character `{}` in key", c.escape_debug()));
            }
            _ => return err(start, "expected `key:value`"),
        }
        if raw_key.is_empty() {
            return err(key_at, "missing key before `:`");
        }
        let key = match raw_key {
            "in" => return err(key_at, "`in:` may appear only once, at the start"),
            "name" => Key::Name,
            "ip" => Key::Ip,
            "type" => Key::Type,
            "vendor" => Key::Vendor,
            "source" => Key::Source,
            "agent" => Key::Agent,
            "gateway" => Key::Gateway,
            "partition" => Key::Partition,
            other => match (other.strip_prefix("tags."), other.strip_prefix("metadata.")) {
                (Some(k), _) if !k.is_empty() => Key::Tag(k.to_owned()),
                (_, Some(k)) if !k.is_empty() => Key::Metadata(k.to_owned()),
                _ => {
                    return err(key_at, format!("unknown key `{other}`; expected one of {KEYS}"));
                }
            },
        };
        self.bump(); // the ':'
        let (values, list) = self.value()?;
        match self.peek() {
            None => {}
            Some(c) if c.is_whitespace() => {}
            Some(c) => {
                return err(self.pos, format!("unexpected `{}` after value", c.escape_debug()));
            }
        }
        Ok(Filter { negated, key, values, list })
    }

    fn value(&mut self) -> Res<(Vec<String>, bool)> {
        match self.peek() {
            None => err(self.pos, "empty value"),
            Some(c) if c.is_whitespace() => err(self.pos, "empty value"),
            Some('(') => self.list().map(|v| (v, true)),
            Some('"') => self.quoted().map(|v| (vec![v], false)),
            Some(_) => self.bare(&[]).map(|v| (vec![v], false)),
        }
    }

    fn list(&mut self) -> Res<Vec<String>> {
        let open = self.pos;
        self.bump();
        if self.peek() == Some(')') {
            return err(open, "empty list");
        }
        let mut values = Vec::new();
        loop {
            match self.peek() {
                Some('"') => values.push(self.quoted()?),
                Some(',') | Some(')') => return err(self.pos, "empty list element"),
                None => return err(open, "unterminated list"),
                Some(c) if c.is_whitespace() => {
                    return err(self.pos, "whitespace is not allowed inside a list");
                }
                Some(_) => values.push(self.bare(&[',', ')'])?),
            }
            match self.bump() {
                Some(',') => {}
                Some(')') => return Ok(values),
                None => return err(open, "unterminated list"),
                Some(c) if c.is_whitespace() => {
                    return err(self.pos - c.len_utf8(), "whitespace is not allowed inside a list");
                }
                Some(c) => {
                    return err(self.pos - c.len_utf8(), format!("unexpected `{}` in list", c.escape_debug()));
                }
            }
        }
    }

    /// A bare value, ending at whitespace, end of input or one of `stops`.
    fn bare(&mut self, stops: &[char]) -> Res<String> {
        let start = self.pos;
        let v = self.take_while(|c| !c.is_whitespace() && !stops.contains(&c));
        if let Some((i, c)) = v.char_indices().find(|&(_, c)| !bare_char(c)) {
            return err(start + i, format!("`{}` is not allowed in an unquoted value", c.escape_debug()));
        }
        Ok(v.to_owned())
    }

    fn quoted(&mut self) -> Res<String> {
        let open = self.pos;
        self.bump();
        let mut out = String::new();
        loop {
            let at = self.pos;
            match self.bump() {
                None => return err(open, "unterminated quoted value"),
                Some('"') => break,
                Some('\\') => match self.bump() {
                    Some(c @ ('"' | '\\')) => out.push(c),
                    None => return err(open, "unterminated quoted value"),
                    Some(_) => return err(at, "unsupported escape (only \\\" and \\\\)"),
                },
                Some(c) if c.is_control() => {
                    return err(at, "control characters are not allowed in values");
                }
                Some(c) => out.push(c),
            }
        }
        if out.is_empty() {
            return err(open, "empty value");
        }
        Ok(out)
    }
}

pub(super) fn parse(s: &str) -> Res<TargetQuery> {
    Parser { s, pos: 0 }.query()
}
