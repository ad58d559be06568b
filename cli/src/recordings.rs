//! `portcullis admin recordings`: list, play back and export session recordings (for
//! holders of `recordings.read`; the CA audits every playback and export).

use crate::api::Api;
use crate::args::RecordingsCommand;
use crate::shared::{ago, bytes, print_json};
use anyhow::{Context, bail};
use portcullis_proto::recording::RecordingInfo;
use std::io::Write;
use std::time::Duration;

pub async fn run(api: &Api, cmd: RecordingsCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        RecordingsCommand::List { user, device } => {
            // Only the query is used: the base is the CA's, added by `Api`.
            let mut url = reqwest::Url::parse("https://ca.invalid/v1/admin/recordings")?;
            for (key, value) in [("user", &user), ("device", &device)] {
                if let Some(value) = value {
                    url.query_pairs_mut().append_pair(key, value);
                }
            }
            let path = format!("{}?{}", url.path(), url.query().unwrap_or_default());
            let list: Vec<RecordingInfo> = api.get(&path).await?;
            if json {
                return print_json(&list);
            }
            println!(
                "{:<32}  {:<12} {:<16} {:<10} {:<10} {:>5} {:>6}  NOTES",
                "SESSION", "USER", "DEVICE", "LOGIN", "MODE", "AGE", "SIZE"
            );
            for r in &list {
                let mut notes = Vec::new();
                if r.input_recorded {
                    notes.push("keystrokes");
                }
                if r.truncated {
                    notes.push("cut at the limit");
                }
                if r.incomplete {
                    notes.push("end missing");
                }
                if r.ended_at.is_none() {
                    notes.push("live");
                }
                println!(
                    "{:<32}  {:<12} {:<16} {:<10} {:<10} {:>5} {:>6}  {}",
                    r.session_id,
                    r.user,
                    r.device,
                    r.login.as_deref().unwrap_or("-"),
                    r.mode,
                    ago(r.started_at),
                    bytes(r.bytes),
                    notes.join(", ")
                );
            }
            if list.is_empty() {
                eprintln!("No recordings.");
            }
        }
        RecordingsCommand::Export { id, output } => {
            let cast = fetch(api, &id).await?;
            match output {
                Some(path) => {
                    std::fs::write(&path, cast).with_context(|| format!("cannot write {}", path.display()))?;
                    eprintln!("Wrote {} (asciicast v2).", path.display());
                }
                None => std::io::stdout().write_all(cast.as_bytes())?,
            }
        }
        RecordingsCommand::Play { id, speed, idle_limit } => {
            let sane = speed.is_finite() && speed > 0.0 && idle_limit.is_finite() && idle_limit >= 0.0;
            if !sane {
                bail!("--speed must be above 0 and --idle-limit 0 or more");
            }
            play(&fetch(api, &id).await?, speed, idle_limit).await?;
        }
    }
    Ok(())
}

async fn fetch(api: &Api, id: &str) -> anyhow::Result<String> {
    if id.len() != 32 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!("a session id is 32 hexadecimal characters (see `portcullis admin recordings list`)");
    }
    api.get_text(&format!("/v1/admin/recordings/{}", id.to_ascii_lowercase())).await
}

/// Writes the output events to this terminal with their timing (pauses capped at
/// `idle_limit`), without the escape sequences that act outside the screen.
async fn play(cast: &str, speed: f64, idle_limit: f64) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout();
    let mut filter = ScreenOnly::default();
    let mut clock = 0.0f64;
    for line in cast.lines().skip(1) {
        let Ok((time, code, text)) = serde_json::from_str::<(f64, String, String)>(line) else {
            bail!("the recording is not asciicast v2");
        };
        let pause = (time - clock).clamp(0.0, idle_limit);
        clock = time;
        if code != "o" {
            continue;
        }
        tokio::time::sleep(Duration::from_secs_f64(pause / speed)).await;
        stdout.write_all(filter.pass(&text).as_bytes())?;
        stdout.flush()?;
    }
    Ok(())
}

/// Drops OSC, DCS, PM and APC strings (`ESC ]`, `ESC P`, `ESC ^`, `ESC _`, or their
/// one-character forms U+009D, U+0090, U+009E, U+009F, up to BEL, `ESC \` or U+009C) from
/// recorded output: they set titles and the clipboard, or talk to the terminal, which a
/// recording played back must not do to the auditor's terminal. Colors and cursor
/// movement (CSI) pass. State carries across events.
#[derive(Default)]
struct ScreenOnly {
    in_string: bool,
    escape: bool,
}

impl ScreenOnly {
    fn pass(&mut self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        for c in text.chars() {
            match (self.in_string, self.escape, c) {
                (true, true, '\\') => (self.in_string, self.escape) = (false, false),
                (true, _, '\u{7}' | '\u{9c}') => (self.in_string, self.escape) = (false, false),
                (true, _, '\u{1b}') => self.escape = true,
                (true, _, _) => self.escape = false,
                (false, true, ']' | 'P' | '^' | '_') => (self.in_string, self.escape) = (true, false),
                (false, true, c) => {
                    out.push('\u{1b}');
                    out.push(c);
                    self.escape = false;
                }
                (false, false, '\u{1b}') => self.escape = true,
                (false, false, '\u{90}' | '\u{9d}' | '\u{9e}' | '\u{9f}') => self.in_string = true,
                (false, false, c) => out.push(c),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::ScreenOnly;

    #[test]
    fn playback_keeps_the_screen_and_drops_what_acts_outside_it() {
        let mut f = ScreenOnly::default();
        assert_eq!(f.pass("\u{1b}[1mbold\u{1b}[0m"), "\u{1b}[1mbold\u{1b}[0m");
        assert_eq!(f.pass("a\u{1b}]52;c;ZXZpbA==\u{7}b"), "ab", "clipboard write");
        assert_eq!(f.pass("x\u{1b}]0;ti"), "x", "a title split between events");
        assert_eq!(f.pass("tle\u{1b}\\y"), "y");
        assert_eq!(f.pass("\u{1b}Pq#0\u{1b}\\z"), "z", "DCS");
        // The same strings in their one-character (C1) forms.
        assert_eq!(f.pass("a\u{9d}52;c;ZXZpbA==\u{7}b"), "ab", "clipboard write, C1 OSC");
        assert_eq!(f.pass("c\u{9d}0;title\u{9c}d"), "cd", "ended by C1 ST");
        for start in ['\u{90}', '\u{9e}', '\u{9f}'] {
            assert_eq!(f.pass(&format!("e{start}payload\u{1b}\\f")), "ef", "{start:?}");
        }
    }
}
