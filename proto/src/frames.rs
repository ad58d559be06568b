//! A recording as the bastion sends it and the CA stores it: the terminal's bytes as they
//! were, in frames, turned into asciicast v2 text only when someone plays or exports it.
//!
//! Recording is paid for on every recorded byte of a live session, playback rarely: so the
//! hot path copies bytes into frames and the CA checks frame headers, not text, and the
//! escaping and UTF-8 decoding happen when the recording is read ([`CastWriter`]).
//!
//! A frame is: the time since the session began in microseconds (u64, little-endian), the
//! event code (`o` output, `i` input, `r` resize), the data's length (u32, little-endian),
//! then the data — terminal bytes for `o` and `i`, `COLSxROWS` for `r`. Every frame holds
//! data, and its data is what counts against the rule's limit, so stored frames are at
//! most [`FRAME_HEADER`] + 1 times what they count.

use crate::asciicast::{MalformedEvents, push_event};
use crate::recording::MAX_TERMINAL_SIDE;
use std::borrow::Cow;

/// Bytes before a frame's data.
pub const FRAME_HEADER: usize = 8 + 1 + 4;

/// Terminal bytes per written event at most, so one event line stays small for a player
/// (escaping a control byte takes six); a longer frame becomes several events.
const MAX_EVENT_BYTES: usize = 16 * 1024;

/// Appends one frame to `out`.
pub fn push_frame(out: &mut Vec<u8>, micros: u64, code: u8, data: &[u8]) {
    let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
    out.reserve(FRAME_HEADER + data.len());
    out.extend_from_slice(&micros.to_le_bytes());
    out.push(code);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(data.get(..len as usize).unwrap_or(data));
}

/// One frame of a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub micros: u64,
    pub code: u8,
    pub data: &'a [u8],
}

/// The frames of `chunk`, each checked: a known code, data within the chunk and not
/// empty, a resize's data `COLSxROWS` (each 1 to [`MAX_TERMINAL_SIDE`]). The first bad
/// frame ends the iteration with `Err`; the error names nothing.
pub fn frames(chunk: &[u8]) -> impl Iterator<Item = Result<Frame<'_>, MalformedEvents>> {
    let mut rest = chunk;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let parsed = next_frame(rest);
        rest = match parsed {
            Ok((_, after)) => after,
            Err(_) => &[],
        };
        Some(parsed.map(|(frame, _)| frame))
    })
}

fn next_frame(chunk: &[u8]) -> Result<(Frame<'_>, &[u8]), MalformedEvents> {
    let (header, rest) = chunk.split_at_checked(FRAME_HEADER).ok_or(MalformedEvents)?;
    let (micros, header) = header.split_at(8);
    let (code, len) = header.split_at(1);
    let micros = u64::from_le_bytes(micros.try_into().map_err(|_| MalformedEvents)?);
    let len = u32::from_le_bytes(len.try_into().map_err(|_| MalformedEvents)?);
    let (data, rest) = rest.split_at_checked(len as usize).ok_or(MalformedEvents)?;
    let code = match code {
        [c @ (b'o' | b'i')] if !data.is_empty() => *c,
        [b'r'] if is_size(data) => b'r',
        _ => return Err(MalformedEvents),
    };
    Ok((Frame { micros, code, data }, rest))
}

/// `COLSxROWS`, each a number from 1 to [`MAX_TERMINAL_SIDE`] without a sign.
fn is_size(data: &[u8]) -> bool {
    let number = |s: &[u8]| {
        !s.is_empty()
            && s.iter().all(u8::is_ascii_digit)
            && std::str::from_utf8(s)
                .is_ok_and(|s| s.parse::<u32>().is_ok_and(|n| (1..=MAX_TERMINAL_SIDE).contains(&n)))
    };
    let mut parts = data.splitn(2, |&b| b == b'x');
    matches!((parts.next(), parts.next()), (Some(cols), Some(rows)) if number(cols) && number(rows))
}

/// What a checked chunk holds ([`check_frames`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FramesSummary {
    /// Any input frame (keystrokes).
    pub input: bool,
    /// The frames' data (terminal bytes, and sizes): what counts against the limit.
    pub bytes: u64,
}

/// Checks every frame of `chunk` ([`frames`]) and sums what the CA needs to know.
pub fn check_frames(chunk: &[u8]) -> Result<FramesSummary, MalformedEvents> {
    let mut summary = FramesSummary::default();
    for frame in frames(chunk) {
        let frame = frame?;
        summary.input |= frame.code == b'i';
        summary.bytes += frame.data.len() as u64;
    }
    Ok(summary)
}

/// Turns frames into asciicast v2 event lines, chunk after chunk of one recording: a
/// character split between two frames (or chunks) of a stream is kept whole.
#[derive(Default)]
pub struct CastWriter {
    output: Utf8Stream,
    input: Utf8Stream,
}

impl CastWriter {
    /// Appends the event lines of `chunk`'s frames to `out`.
    pub fn push_chunk(&mut self, out: &mut String, chunk: &[u8]) -> Result<(), MalformedEvents> {
        for frame in frames(chunk) {
            let Frame { micros, code, data } = frame?;
            let time = micros as f64 / 1e6;
            let (code, stream) = match code {
                b'o' => ("o", &mut self.output),
                b'i' => ("i", &mut self.input),
                _ => {
                    push_event(out, time, "r", &String::from_utf8_lossy(data));
                    continue;
                }
            };
            for piece in data.chunks(MAX_EVENT_BYTES) {
                let text = stream.decode(piece);
                if !text.is_empty() {
                    push_event(out, time, code, &text);
                }
            }
        }
        Ok(())
    }
}

/// Text from a byte stream: a character split between two pieces is kept until its end
/// arrives; invalid bytes become U+FFFD.
#[derive(Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// The text of `data` (after what was kept from before), borrowed when it is valid
    /// and nothing was kept: the common case copies nothing.
    pub fn decode<'a>(&mut self, data: &'a [u8]) -> Cow<'a, str> {
        if self.pending.is_empty()
            && let Some((whole, tail)) = data.split_at_checked(complete_prefix(data))
            && let Ok(text) = std::str::from_utf8(whole)
        {
            self.pending.extend_from_slice(tail);
            return Cow::Borrowed(text);
        }
        let mut bytes = std::mem::take(&mut self.pending);
        bytes.extend_from_slice(data);
        self.pending = bytes.split_off(complete_prefix(&bytes));
        Cow::Owned(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// The length of `b` without a trailing, unfinished UTF-8 sequence.
fn complete_prefix(b: &[u8]) -> usize {
    let len = b.len();
    for back in 1..=len.min(4) {
        let Some(&byte) = b.get(len - back) else { break };
        if byte & 0xC0 != 0x80 {
            let needs = match byte {
                0xC0..=0xDF => 2,
                0xE0..=0xEF => 3,
                0xF0..=0xF7 => 4,
                _ => 1,
            };
            return if needs > back { len - back } else { len };
        }
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::asciicast::check_events;

    #[test]
    fn characters_split_between_pieces_are_kept_whole() {
        let text = "é€😀";
        let mut stream = Utf8Stream::default();
        let mut out = String::new();
        for b in text.as_bytes() {
            out.push_str(&stream.decode(std::slice::from_ref(b)));
        }
        assert_eq!(out, text);
        assert_eq!(Utf8Stream::default().decode(b"a\xffb"), "a\u{fffd}b");
        assert_eq!(complete_prefix(b"ab\xe2\x82"), 2);
        assert_eq!(complete_prefix(b"ab\xe2\x82\xac"), 5);
    }

    /// Frames written chunk by chunk read back as the event lines the bastion used to
    /// write itself, which the CA's line check accepts.
    #[test]
    fn frames_become_the_event_lines_a_player_reads() {
        let mut first = Vec::new();
        push_frame(&mut first, 0, b'r', b"80x24");
        push_frame(&mut first, 1_500_000, b'o', "hé".as_bytes());
        push_frame(&mut first, 1_500_001, b'o', &"€".as_bytes()[..1]);
        let mut second = Vec::new();
        push_frame(&mut second, 2_000_000, b'o', &"€\"\n\x1b[0m".as_bytes()[1..]);
        push_frame(&mut second, 2_250_000, b'i', b"ls\r");
        push_frame(&mut second, 3_000_000, b'o', b"\xff");

        assert_eq!(check_frames(&first), Ok(FramesSummary { input: false, bytes: 9 }));
        assert_eq!(check_frames(&second), Ok(FramesSummary { input: true, bytes: 12 }));
        let mut writer = CastWriter::default();
        let mut cast = String::new();
        writer.push_chunk(&mut cast, &first).unwrap();
        writer.push_chunk(&mut cast, &second).unwrap();
        let expected = concat!(
            "[0.000000, \"r\", \"80x24\"]\n",
            "[1.500000, \"o\", \"hé\"]\n",
            "[2.000000, \"o\", \"€\\\"\\n\\u001b[0m\"]\n",
            "[2.250000, \"i\", \"ls\\r\"]\n",
            "[3.000000, \"o\", \"\u{fffd}\"]\n",
        );
        assert_eq!(cast, expected);
        assert_eq!(check_events(&cast), Ok(true));
    }

    #[test]
    fn a_long_frame_is_written_as_several_events_and_loses_no_character() {
        let text = "€".repeat(MAX_EVENT_BYTES); // three bytes each: pieces split characters
        let mut frames = Vec::new();
        push_frame(&mut frames, 1_000_000, b'o', text.as_bytes());
        let mut cast = String::new();
        CastWriter::default().push_chunk(&mut cast, &frames).unwrap();
        let events: Vec<(f64, String, String)> = cast.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(events.len(), 3, "{} bytes in pieces of {MAX_EVENT_BYTES}", text.len());
        // A piece may begin with the end of a character the one before it split.
        assert!(
            events.iter().all(|(time, code, piece)| *time == 1.0 && code == "o" && piece.len() < MAX_EVENT_BYTES + 4)
        );
        assert_eq!(events.into_iter().map(|(_, _, piece)| piece).collect::<String>(), text);
    }

    #[test]
    fn a_frame_that_does_not_fit_its_chunk_or_names_no_known_event_is_refused() {
        let mut good = Vec::new();
        push_frame(&mut good, 7, b'o', b"hello");
        assert!(check_frames(&good).is_ok());
        // Cut anywhere: the header or the data no longer fits.
        for cut in 1..good.len() {
            assert_eq!(check_frames(&good[..cut]), Err(MalformedEvents), "cut at {cut}");
        }
        // A length that points past the end.
        let mut long = good.clone();
        long[9..13].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(check_frames(&long), Err(MalformedEvents));
        // An unknown code.
        let mut unknown = good.clone();
        unknown[8] = b'x';
        assert_eq!(check_frames(&unknown), Err(MalformedEvents));
        // Empty data: a frame that counts nothing takes room all the same.
        for code in [b'o', b'i'] {
            let mut empty = Vec::new();
            push_frame(&mut empty, 0, code, b"");
            assert_eq!(check_frames(&empty), Err(MalformedEvents), "{}", code as char);
        }
        // A resize that is not COLSxROWS within 1..=MAX_TERMINAL_SIDE.
        for size in [&b"80x"[..], b"x24", b"80-24", b"+80x24", b"80x1001", b"70000x24", b"0x24", b"80x24x1", b""] {
            let mut resize = Vec::new();
            push_frame(&mut resize, 0, b'r', size);
            assert_eq!(check_frames(&resize), Err(MalformedEvents), "{size:?}");
        }
        for size in [&b"1x1"[..], b"1000x1000", b"80x24"] {
            let mut resize = Vec::new();
            push_frame(&mut resize, 0, b'r', size);
            assert!(check_frames(&resize).is_ok(), "{size:?}");
        }
        // A good frame after a bad one does not make the chunk good.
        let mut both = unknown.clone();
        both.extend_from_slice(&good);
        assert_eq!(check_frames(&both), Err(MalformedEvents));
        // Nothing is a chunk of no frames.
        assert_eq!(check_frames(&[]), Ok(FramesSummary::default()));
    }
}
