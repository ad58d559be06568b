//! Progress lines for people (one per step, on stderr so stdout stays clean) and, with
//! `--json`, one JSON result on stdout at the end.

use crate::error::Error;
use serde::Serialize;
use serde_json::{Value, json};

#[derive(Debug, Default, Serialize)]
pub struct Step {
    pub step: String,
    pub detail: String,
}

#[derive(Debug)]
pub struct Report {
    json: bool,
    pub command: &'static str,
    pub steps: Vec<Step>,
    pub changes: Vec<String>,
    pub writes: usize,
    pub reloads: usize,
    pub extra: serde_json::Map<String, Value>,
}

impl Report {
    pub fn new(command: &'static str, json: bool) -> Report {
        Report {
            json,
            command,
            steps: Vec::new(),
            changes: Vec::new(),
            writes: 0,
            reloads: 0,
            extra: serde_json::Map::new(),
        }
    }

    pub fn step(&mut self, step: &str, detail: impl Into<String>) {
        let detail = detail.into();
        if !self.json {
            eprintln!("[{step}] {detail}");
        }
        self.steps.push(Step { step: step.to_owned(), detail });
    }

    pub fn set(&mut self, key: &str, value: impl Serialize) {
        self.extra.insert(key.to_owned(), serde_json::to_value(value).unwrap_or(Value::Null));
    }

    /// Prints the final result; returns the exit code.
    pub fn finish(self, result: &Result<String, Error>) -> i32 {
        let code = match result {
            Ok(_) => 0,
            Err(e) => e.exit_code(),
        };
        if self.json {
            let mut v = json!({
                "command": self.command,
                "ok": result.is_ok(),
                "exit_code": code,
                "changed": self.writes > 0,
                "writes": self.writes,
                "reloads": self.reloads,
                "changes": self.changes,
                "steps": self.steps,
            });
            if let Value::Object(map) = &mut v {
                match result {
                    Ok(summary) => map.insert("summary".into(), json!(summary)),
                    Err(e) => map.insert("error".into(), json!({ "code": e.code(), "message": e.to_string() })),
                };
                map.extend(self.extra);
            }
            println!("{v}");
        } else {
            match result {
                Ok(summary) => println!("{summary}"),
                Err(e) => eprintln!("error: {e}"),
            }
        }
        code
    }
}
