//! What the CA stores: chunks sealed and in order from their own bastion, shown only to auditors, kept in backups, refused cleanly on a full disk.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recordings_are_kept_sealed_in_order_from_their_bastion_and_shown_only_to_auditors() {
    kept_sealed_in_order(fixture(false).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recordings_are_kept_sealed_in_order_on_postgres_too() {
    kept_sealed_in_order(fixture(true).await).await;
}

async fn kept_sealed_in_order(fx: Fx) {
    // Off unless the rule says so: no recording asked for, none kept.
    let (plain, grant) = console_session(&fx, "pve03").await;
    assert!(grant.get("recording").is_none(), "{grant}");
    let (status, _) = chunk(&fx, &fx.b1, &plain, json!({"seq": 0, "events": "", "bytes": 0})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A user sees on the device's page, before opening a console, that it is recorded.
    let alice = bearer(&fx.ca, "alice").await;
    for (device, recorded) in [("pve01", true), ("pve03", false)] {
        let (status, details) = fx.api.get_json(Some(&alice), &format!("/v1/console/devices/{device}")).await;
        assert_eq!(status, StatusCode::OK, "{details}");
        let console = details["rules"].as_array().unwrap().iter().find(|r| r["purpose"] == "console_access").unwrap();
        assert_eq!(console["recorded"].as_bool().unwrap_or(false), recorded, "{device}: {details}");
    }

    let (id, grant) = console_session(&fx, "pve01").await;
    assert_eq!(grant["recording"], json!({"input": false, "max_bytes": 1 << 20, "close_at_limit": false}));
    let opened = audit(&fx.ca, "session_opened").await;
    assert!(opened.iter().any(|o| o["session_id"] == id.as_str() && o["recorded"] == true), "{opened:?}");
    assert!(opened.iter().any(|o| o["session_id"] == plain.as_str() && o.get("recorded").is_none()), "{opened:?}");

    // What a chunk counts against the limit is what its frames hold: the size's text
    // and the output.
    let first = json!({"seq": 0, "events": "[0.1, \"r\", \"100x30\"]\n[0.2, \"o\", \"secret-output$ \"]\n",
        "bytes": 21, "cols": 100, "rows": 30});
    assert_eq!(chunk(&fx, &fx.b1, &id, first.clone()).await.0, StatusCode::NO_CONTENT);
    // A retry of a stored chunk changes nothing.
    assert_eq!(chunk(&fx, &fx.b1, &id, first).await.0, StatusCode::NO_CONTENT);
    // From the attacker's side, each refused and audited: another bastion, a gap, input
    // the rule does not record, a malformed event, more than the limit.
    let big = "x".repeat((1 << 20) + (64 << 10) + 1);
    let refusals = [
        (
            &fx.b2,
            json!({"seq": 1, "events": "[0.3, \"o\", \"forged\"]\n", "bytes": 6}),
            StatusCode::FORBIDDEN,
            "not_your_session",
        ),
        (
            &fx.b1,
            json!({"seq": 5, "events": "[0.3, \"o\", \"x\"]\n", "bytes": 1}),
            StatusCode::CONFLICT,
            "out_of_order",
        ),
        (
            &fx.b1,
            json!({"seq": 1, "events": "[0.3, \"i\", \"hunter2\"]\n", "bytes": 7}),
            StatusCode::BAD_REQUEST,
            "input_not_recorded",
        ),
        (
            &fx.b1,
            json!({"seq": 1, "events": "[0.3, \"x\", \"?\"]\n", "bytes": 1}),
            StatusCode::BAD_REQUEST,
            "malformed",
        ),
        // Frames carry their own lengths: fewer bytes declared than they hold (to stay
        // under the limit) is malformed too.
        (
            &fx.b1,
            json!({"seq": 1, "events": "[0.3, \"o\", \"more than declared\"]\n", "bytes": 4}),
            StatusCode::BAD_REQUEST,
            "malformed",
        ),
        (
            &fx.b1,
            json!({"seq": 1, "events": format!("[0.3, \"o\", \"{big}\"]\n"), "bytes": big.len()}),
            StatusCode::PAYLOAD_TOO_LARGE,
            "over_limit",
        ),
        // Sizes count like output: a chunk of sizes alone that declares nothing, to fill
        // the disk past the limit, does not hold what it declares.
        (
            &fx.b1,
            json!({"seq": 1, "events": "[0.3, \"r\", \"80x24\"]\n[0.4, \"r\", \"81x24\"]\n", "bytes": 0}),
            StatusCode::BAD_REQUEST,
            "malformed",
        ),
        // A frame that holds nothing (it would take room and count nothing).
        (&fx.b1, json!({"seq": 1, "events": "[0.3, \"o\", \"\"]\n", "bytes": 0}), StatusCode::BAD_REQUEST, "malformed"),
        // A size no player can draw, as an event or in the chunk's header.
        (
            &fx.b1,
            json!({"seq": 1, "events": "[0.3, \"r\", \"70000x24\"]\n", "bytes": 8}),
            StatusCode::BAD_REQUEST,
            "malformed",
        ),
        (
            &fx.b1,
            json!({"seq": 1, "events": "[0.3, \"o\", \"x\"]\n", "bytes": 1, "cols": 70000, "rows": 24}),
            StatusCode::BAD_REQUEST,
            "malformed",
        ),
    ];
    for (bastion, body, status, reason) in &refusals {
        let (got, v) = chunk(&fx, bastion, &id, body.clone()).await;
        assert_eq!(got, *status, "{reason}: {v}");
        let last = audit(&fx.ca, "recording_refused").await.pop().unwrap();
        assert_eq!((last["reason"].as_str(), last["session_id"].as_str()), (Some(*reason), Some(id.as_str())));
    }
    // Event lines that are not UTF-8, and frames cut short, are malformed too (audited);
    // a body of another media type, or a query with a field nobody defined, is not a
    // chunk at all.
    let whole = frames_of("[0.3, \"o\", \"x\"]\n");
    for (media_type, body) in
        [(RECORDING_EVENTS_MEDIA_TYPE, vec![0xff]), (RECORDING_FRAMES_MEDIA_TYPE, whole[..whole.len() - 1].to_vec())]
    {
        let invalid = raw_chunk(&fx, &fx.b1, &id, json!({"seq": 1, "bytes": 1}), media_type, body);
        assert_eq!(invalid.await.0, StatusCode::BAD_REQUEST, "{media_type}");
        let last = audit(&fx.ca, "recording_refused").await.pop().unwrap();
        assert_eq!(last["reason"], "malformed");
    }
    // Event lines from a bastion older than frames count as the text they are, whatever
    // they declare (lines of sizes or escapes would otherwise be free); a chunk of them
    // must end its last line (chunks are joined as they are at playback).
    let lines_refusals = [
        (json!({"seq": 1, "events": format!("[0.3, \"o\", \"{big}\"]\n"), "bytes": 0}), "over_limit"),
        (json!({"seq": 1, "events": "[0.3, \"o\", \"x\"]", "bytes": 1}), "malformed"),
    ];
    for (body, reason) in lines_refusals {
        let (status, v) = lines_chunk(&fx, &fx.b1, &id, body).await;
        assert!(status.is_client_error(), "{reason}: {v}");
        let last = audit(&fx.ca, "recording_refused").await.pop().unwrap();
        assert_eq!(last["reason"], reason);
    }
    let events = b"[0.3, \"o\", \"x\"]\n".to_vec();
    let refused_before = audit(&fx.ca, "recording_refused").await.len();
    for (query, media_type) in [
        (json!({"seq": 1, "bytes": 1}), "application/json"),
        (json!({"seq": 1, "bytes": 1, "sealed": "yes"}), RECORDING_EVENTS_MEDIA_TYPE),
        (json!({"bytes": 1}), RECORDING_EVENTS_MEDIA_TYPE),
    ] {
        let (status, v) = raw_chunk(&fx, &fx.b1, &id, query.clone(), media_type, events.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query} {media_type}: {v}");
    }
    assert_eq!(audit(&fx.ca, "recording_refused").await.len(), refused_before);
    // A bastion older than frames sends event lines; both play back as one recording.
    let last_line = "[1.5, \"o\", \"exit\\r\\n\"]\n";
    let last = json!({"seq": 1, "events": last_line, "bytes": 6, "truncated": true, "last": true});
    assert_eq!(lines_chunk(&fx, &fx.b1, &id, last).await.0, StatusCode::NO_CONTENT);
    let (status, _) = chunk(&fx, &fx.b1, &id, json!({"seq": 2, "events": "", "bytes": 0})).await;
    assert_eq!(status, StatusCode::CONFLICT, "nothing is added after the last chunk");
    let truncated = audit(&fx.ca, "recording_truncated").await;
    assert_eq!(truncated.len(), 1, "{truncated:?}");

    // Sealed at rest: neither the database nor the files beside it hold terminal text.
    // PostgreSQL keeps a chunk's bytes in its row; a SQLite file keeps each chunk in a
    // file of its own (written once, not to the WAL and again at the checkpoint).
    use sqlx::Row;
    let store = fx.ca.core().store();
    let rows = sqlx::query("SELECT sealed, in_file FROM recording_chunks").fetch_all(store.pool()).await.unwrap();
    assert_eq!(rows.len(), 2);
    let chunk_files = store.chunk_files();
    for row in &rows {
        let (sealed, in_file): (Vec<u8>, i64) = (row.try_get("sealed").unwrap(), row.try_get("in_file").unwrap());
        assert_eq!((in_file == 1, sealed.is_empty()), (chunk_files.is_some(), chunk_files.is_some()));
    }
    let mut sealed = store.recording_chunks(&id).await.unwrap();
    if let Some(files) = &chunk_files {
        let mut on_disk = std::fs::read_dir(files.dir().join(&id)).unwrap().map(|e| e.unwrap()).collect::<Vec<_>>();
        on_disk.sort_by_key(std::fs::DirEntry::file_name);
        assert_eq!(on_disk.iter().map(|e| e.file_name().into_string().unwrap()).collect::<Vec<_>>(), ["0", "1"]);
        use std::os::unix::fs::PermissionsExt;
        for entry in &on_disk {
            assert_eq!(entry.metadata().unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert_eq!(std::fs::metadata(files.dir()).unwrap().permissions().mode() & 0o777, 0o700);
        let read: Vec<_> = on_disk.iter().map(|e| std::fs::read(e.path()).unwrap()).collect();
        assert_eq!(read, sealed.iter().map(|(_, bytes)| bytes.clone()).collect::<Vec<_>>());
    }
    assert_eq!(sealed.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(), [0, 1]);
    // The version byte: frames, then event lines.
    for ((_, bytes), version) in sealed.drain(..).zip([2, 1]) {
        let readable = |word: &[u8]| bytes.windows(word.len()).any(|w| w == word);
        assert!(bytes.first() == Some(&version) && !readable(b"secret") && !readable(b"exit"), "{bytes:?}");
    }
    if chunk_files.is_some() {
        backup_holds_the_recording(&fx, &id).await;
    }

    // Only holders of recordings.read list and play; an administrator without it does not.
    let audrey = bearer(&fx.ca, "audrey").await;
    for token in [&fx.admin, &bearer(&fx.ca, "alice").await] {
        assert_eq!(fx.api.get_json(Some(token), "/v1/admin/recordings").await.0, StatusCode::FORBIDDEN);
        assert_eq!(cast(&fx, token, &id).await.0, StatusCode::FORBIDDEN);
    }
    let (status, list) = fx.api.get_json(Some(&audrey), "/v1/admin/recordings").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let entry = &list[0];
    assert_eq!(
        (entry["session_id"].as_str(), entry["user"].as_str(), entry["device"].as_str()),
        (Some(id.as_str()), Some("alice"), Some("pve01"))
    );
    assert_eq!(
        (entry["bytes"].as_u64(), entry["truncated"].as_bool(), entry["mode"].as_str()),
        (Some(21 + last_line.len() as u64), Some(true), Some("console"))
    );
    assert!(entry["ended_at"].as_u64().is_some() && entry["incomplete"] == false, "{entry}");
    let (_, by_user) = fx.api.get_json(Some(&audrey), "/v1/admin/recordings?user=bob").await;
    assert_eq!(by_user, json!([]));

    let (status, text, headers) = cast(&fx, &audrey, &id).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(headers["content-type"], "application/x-asciicast");
    assert!(headers["content-disposition"].to_str().unwrap().contains(&format!("{id}.cast")));
    let mut lines = text.lines();
    let header: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(
        (header["version"].as_u64(), header["width"].as_u64(), header["height"].as_u64()),
        (Some(2), Some(100), Some(30))
    );
    assert_eq!(header["title"], "alice as root on pve01");
    let events: Vec<Value> = lines.map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(
        events,
        vec![json!([0.1, "r", "100x30"]), json!([0.2, "o", "secret-output$ "]), json!([1.5, "o", "exit\r\n"])]
    );
    let played = audit(&fx.ca, "recording_played").await;
    assert_eq!(played.len(), 1, "{played:?}");
    assert_eq!((played[0]["actor"].as_str(), played[0]["user"].as_str()), (Some("audrey"), Some("alice")));
    // No terminal text in the audit trail.
    let all = serde_json::to_string(&portcullis_tests::audit_payloads(&fx.ca, "recording_played").await).unwrap();
    assert!(!all.contains("secret-output"));

    // Played a chunk at a time (what playback holds is one chunk's text): the header,
    // then one piece per chunk, which together are the file served above.
    let auditor = fx.ca.identity().caller(&audrey).await.unwrap();
    let read = fx.ca.core().authorize::<proof::RecordingsRead>(&auditor).unwrap();
    let (_, mut playback) = fx.ca.recordings().cast(&read, &id).await.unwrap();
    let mut pieces = Vec::new();
    while let Some(piece) = playback.next().await.unwrap() {
        pieces.push(piece);
    }
    assert_eq!((pieces.len(), pieces.concat()), (3, text.clone()));

    // A rule that records input takes keystrokes.
    let (keys, grant) = console_session(&fx, "pve02").await;
    assert_eq!(grant["recording"]["input"], true);
    let typed = json!({"seq": 0, "events": "[0.3, \"i\", \"ls\\r\"]\n", "bytes": 3, "last": true});
    assert_eq!(chunk(&fx, &fx.b1, &keys, typed).await.0, StatusCode::NO_CONTENT);

    // A session that closes without a last chunk ends its recording at the close;
    // nothing is added after. One that never reached its node recorded nothing and
    // misses nothing; one that ran (its bastion could not hand the end over) is marked
    // as missing its end.
    let (never, _) = console_session(&fx, "pve01").await;
    let close = json!({"session_id": never, "reason": "target_unreachable", "bytes_from_client": 0,
        "bytes_to_client": 0, "duration_ms": 10});
    let (status, v) = fx.api.post_json(Some(&fx.b1), "/v1/bastion/sessions/close", &close).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{v}");
    let (_, list) = fx.api.get_json(Some(&audrey), "/v1/admin/recordings?device=pve01").await;
    let ended = list.as_array().unwrap().iter().find(|r| r["session_id"] == never.as_str()).unwrap();
    assert!(ended["ended_at"].is_u64() && ended["bytes"] == 0 && ended["incomplete"] == false, "{ended}");
    let (cut, _) = console_session(&fx, "pve01").await;
    let begun = json!({"seq": 0, "events": "[0.1, \"o\", \"begun\"]\n", "bytes": 5});
    assert_eq!(chunk(&fx, &fx.b1, &cut, begun).await.0, StatusCode::NO_CONTENT);
    let close = json!({"session_id": cut, "reason": "browser_disconnect", "bytes_from_client": 0,
        "bytes_to_client": 5, "duration_ms": 10});
    assert_eq!(fx.api.post_json(Some(&fx.b1), "/v1/bastion/sessions/close", &close).await.0, StatusCode::NO_CONTENT);
    let (_, list) = fx.api.get_json(Some(&audrey), "/v1/admin/recordings?device=pve01").await;
    let ended = list.as_array().unwrap().iter().find(|r| r["session_id"] == cut.as_str()).unwrap();
    assert!(ended["ended_at"].is_u64() && ended["bytes"] == 5 && ended["incomplete"] == true, "{ended}");
    let (status, _) =
        chunk(&fx, &fx.b1, &never, json!({"seq": 0, "events": "[0.1, \"o\", \"late\"]\n", "bytes": 4})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    // The append itself re-checks what the service read before it: a chunk that reaches
    // the store after a close ended the recording (the two racing) is not taken.
    let late = store::ChunkAppend {
        session_id: &never,
        seq: 0,
        sealed: &store::ChunkBytes::Row(vec![1]),
        bytes: 4,
        limit: 1 << 30,
        size: None,
        truncated: false,
        ended_at: None,
    };
    let mut tx = fx.ca.core().store().begin().await.unwrap();
    let appended = store::append_recording_chunk(tx.conn(), &late).await.unwrap();
    assert_eq!(appended, store::Appended::Refused("recording_ended"));
    drop(tx);

    // A session still live when the others expire: its recording started before the
    // retention cutoff, but is kept while the session lives.
    let (long, _) = console_session(&fx, "pve01").await;
    let output = json!({"seq": 0, "events": "[0.1, \"o\", \"still here\"]\n", "bytes": 10});
    assert_eq!(chunk(&fx, &fx.b1, &long, output).await.0, StatusCode::NO_CONTENT);

    // A recording missing a chunk (a store changed behind the CA's back) is not played
    // as if it were whole.
    sqlx::query("DELETE FROM recording_chunks WHERE session_id = $1").bind(&keys).execute(store.pool()).await.unwrap();
    let (status, body, _) = cast(&fx, &audrey, &keys).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");

    // Retention: a week later all are gone, and that is audited. Chunk files go with
    // their rows, and so do any a crash left without a row; what is not a recording's
    // directory is left alone.
    let orphan = chunk_files.as_ref().map(|files| {
        let (orphan, other) = (files.dir().join(session_id()), files.dir().join("not-a-recording"));
        for dir in [&orphan, &other] {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join("0"), b"sealed").unwrap();
        }
        (orphan, other)
    });
    fx.clock.set(fx.ca.core().now() + RETENTION.as_secs() + 1);
    fx.ca.housekeeping().await.unwrap();
    let audrey = bearer(&fx.ca, "audrey").await;
    let (_, list) = fx.api.get_json(Some(&audrey), "/v1/admin/recordings").await;
    let kept: Vec<&str> = list.as_array().unwrap().iter().map(|r| r["session_id"].as_str().unwrap()).collect();
    assert_eq!(kept, [long.as_str()]);
    assert_eq!(cast(&fx, &audrey, &id).await.0, StatusCode::NOT_FOUND);
    let rows =
        sqlx::query("SELECT session_id FROM recording_chunks").fetch_all(fx.ca.core().store().pool()).await.unwrap();
    assert_eq!(rows.iter().map(|r| r.get::<String, _>("session_id")).collect::<Vec<_>>(), [long.as_str()]);
    let expired = audit(&fx.ca, "recordings_expired").await;
    assert_eq!(expired.last().unwrap()["count"], 4, "{expired:?}");
    if let (Some(files), Some((orphan, other))) = (&chunk_files, orphan) {
        assert!(!files.dir().join(&id).exists() && !files.dir().join(&keys).exists() && !orphan.exists());
        assert!(other.join("0").exists());
    }
}

/// `portcullisd backup` of a SQLite CA whose recordings are kept in files: the backup is
/// one file that holds them (in its rows), and the restored CA plays them.
async fn backup_holds_the_recording(fx: &Fx, id: &str) {
    let out = fx._dir.path().join("backup.db");
    let url = sqlite_url(fx._dir.path());
    portcullis_ca::backup::backup(&url, &out).await.unwrap();
    let restored_dir = fx._dir.path().join("restored");
    std::fs::create_dir(&restored_dir).unwrap();
    let restored_url = sqlite_url(&restored_dir);
    portcullis_ca::backup::restore(&out, &restored_url).await.unwrap();
    let config = CaConfig::new(restored_url, fx._dir.path().join("policy"), SecretString::from(TEST_PASSPHRASE));
    let restored = Ca::open(config, Arc::new(fx.clock.clone())).await.unwrap();
    let store = restored.core().store();
    assert_eq!(store.recording_chunks(id).await.unwrap(), fx.ca.core().store().recording_chunks(id).await.unwrap());
    assert!(!store.chunk_files().unwrap().dir().exists(), "the restored chunks are in their rows");
    let audrey = restored.identity().caller(&bearer(&restored, "audrey").await).await.unwrap();
    let read = restored.core().authorize::<proof::RecordingsRead>(&audrey).unwrap();
    let (_, playback) = restored.recordings().cast(&read, id).await.unwrap();
    let cast = playback.text().await.unwrap();
    assert!(cast.contains("secret-output$ ") && cast.contains("exit\\r\\n"), "{cast}");
    restored.core().store().close().await;
}

/// A chunk arriving when the disk is full (SQLite on a small tmpfs): refused with a 503
/// that says so, and nothing half-written — no row, no partial or temporary file — so the
/// bastion's retry of the same chunk is taken once space is back, and the recording plays
/// whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_a_chunk_cleanly_and_its_retry_is_taken_once_space_is_back() {
    let disk = portcullis_tests::small_disk::SmallDisk::mount("24m");
    let fx = fixture_with_sqlite_in(false, Some(disk.path())).await;
    let (id, _) = console_session(&fx, "pve01").await;
    let first = json!({"seq": 0, "events": "[0.1, \"o\", \"before the disk filled\"]\n", "bytes": 22});
    assert_eq!(chunk(&fx, &fx.b1, &id, first).await.0, StatusCode::NO_CONTENT);

    let filler = disk.fill();
    let text = "after ".repeat(10_000);
    let second = json!({"seq": 1, "events": format!("[0.2, \"o\", \"{text}\"]\n"), "bytes": text.len(), "last": true});
    let (status, refusal) = chunk(&fx, &fx.b1, &id, second.clone()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{refusal}");
    assert_eq!(refusal["error"], "store_unavailable", "{refusal}");
    assert!(refusal["message"].as_str().unwrap().contains("disk full"), "{refusal}");
    let files = fx.ca.core().store().chunk_files().unwrap();
    let on_disk = || -> Vec<String> {
        let entries = std::fs::read_dir(files.dir().join(&id)).unwrap();
        let mut names: Vec<String> = entries.map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        names
    };
    assert_eq!(on_disk(), ["0"], "no partial or temporary file is left");
    assert_eq!(fx.ca.core().store().recording_chunks(&id).await.unwrap().len(), 1, "no row without its file");

    std::fs::remove_file(filler).unwrap();
    assert_eq!(chunk(&fx, &fx.b1, &id, second).await.0, StatusCode::NO_CONTENT);
    assert_eq!(on_disk(), ["0", "1"]);
    let audrey = bearer(&fx.ca, "audrey").await;
    let (status, played, _) = cast(&fx, &audrey, &id).await;
    assert_eq!(status, StatusCode::OK, "{played}");
    // The output as the terminal showed it (a long frame plays as several events).
    let shown: String = played
        .lines()
        .skip(1)
        .map(|line| serde_json::from_str::<(f64, String, String)>(line).unwrap())
        .filter(|(_, code, _)| code == "o")
        .map(|(_, _, text)| text)
        .collect();
    assert_eq!(shown, format!("before the disk filled{text}"), "the recording plays whole");
}
