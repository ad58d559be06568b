//! A recording chunk as a bastion sends it to the CA: frames, or (from bastions older than
//! frames) asciicast event lines. The first byte picks which. Whatever the CA accepts as
//! frames must play back (`CastWriter`) as event lines the CA's own line check accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_proto::asciicast::check_events;
use portcullis_proto::frames::{CastWriter, check_frames};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, chunk)) = data.split_first() else { return };
    if pick % 2 == 0 {
        if check_frames(chunk).is_ok() {
            let mut cast = String::new();
            CastWriter::default().push_chunk(&mut cast, chunk).expect("checked frames play back");
            check_events(&cast).expect("played-back lines are events");
        }
    } else if let Ok(lines) = std::str::from_utf8(chunk) {
        let _ = check_events(lines);
    }
});
