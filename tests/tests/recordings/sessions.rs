//! Recording real sessions: stock ssh through the bastion, huge terminals, and a console played back in Chromium.

use super::*;

/// A client may claim any terminal size (SSH carries 32-bit numbers; a real terminal's
/// are 16-bit). Claiming one no player can draw — to make the CA refuse the recording
/// (which then stops, under a `stop` rule) or to make playback draw billions of cells —
/// leaves the session recorded, its sizes within what a player draws; the same size
/// again is not recorded again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_claiming_a_huge_terminal_is_still_recorded() {
    use portcullis_tests::bastion_world::{World, policy};
    use russh::ChannelMsg;
    let w = World::start("15m").await;
    let recorded = policy("15m").replace("allowed_ports = [22, 2200]\n", "allowed_ports = [22, 2200]\nrecord = true\n");
    let auditor = "[[role]]\nname = \"auditor\"\npermissions = [\"recordings.read\"]\n\n\
                   [[binding]]\nuser = \"admin\"\nroles = [\"auditor\"]\n";
    for (file, text) in [("prod.toml", recorded.as_str()), ("auditor.toml", auditor)] {
        let (status, body) = w.server.write_policy(file, text).await;
        assert!(status.is_success(), "{file}: {body}");
    }
    // Through russh: OpenSSH sends its terminal's real size.
    let conn = w.russh_login("root%pve01").await;
    let mut channel = conn.channel_open_session().await.unwrap();
    channel.request_pty(true, "xterm", 70_000, 24, 0, 0, &[]).await.unwrap();
    channel.request_shell(true).await.unwrap();
    for _ in 0..3 {
        channel.window_change(4_000_000_000, 100, 0, 0).await.unwrap();
    }
    channel.data(&b"echo sized-$((6*7)); exit\n"[..]).await.unwrap();
    let mut shown = Vec::new();
    while let Some(msg) = channel.wait().await {
        match msg {
            ChannelMsg::Data { data } => shown.extend_from_slice(&data),
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    assert!(String::from_utf8_lossy(&shown).contains("sized-42"), "{}", String::from_utf8_lossy(&shown));

    let id = loop {
        let (status, list) = w.server.get_json(Some(&w.admin), "/v1/admin/recordings").await;
        assert_eq!(status, StatusCode::OK, "{list}");
        if let Some(r) = list.as_array().unwrap().iter().find(|r| r["ended_at"].is_u64()) {
            break r["session_id"].as_str().unwrap().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(w.server.audit_events("recording_refused").await.is_empty(), "every chunk was taken");
    let (status, cast) = w.server.get_text(Some(&w.admin), &format!("/v1/admin/recordings/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{cast}");
    let mut lines = cast.lines();
    let header: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!((header["width"].as_u64(), header["height"].as_u64()), (Some(1000), Some(24)), "{header}");
    let events: Vec<(f64, String, String)> = lines.map(|l| serde_json::from_str(l).unwrap()).collect();
    let sizes: Vec<&str> = events.iter().filter(|e| e.1 == "r").map(|e| e.2.as_str()).collect();
    assert_eq!(sizes, ["1000x24", "1000x100"], "{cast}");
    let output: String = events.iter().filter(|e| e.1 == "o").map(|e| e.2.as_str()).collect();
    assert!(output.contains("sized-42"), "{cast}");
}

/// A real `ssh` through the all-in-one under a rule that records input and closes at a
/// 1 MiB limit: the user is told at the start; the recording holds what the terminal
/// showed and what was typed, in order; jump mode is refused with the reason; a session
/// printing more than the limit is closed with the reason, its recording marked cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_ssh_session_is_recorded_through_the_bastion_and_jump_mode_is_refused() {
    use portcullis_tests::bastion_world::{World, add_node, loopback_ip, policy, text, wait_output};
    use std::io::Write;
    let w = World::start("15m").await;
    let recorded = policy("15m").replace(
        "allowed_ports = [22, 2200]\n",
        "allowed_ports = [22, 2200]\nrecord = true\nrecord_input = true\nrecord_max_mib = 1\nrecord_over_limit = \"close\"\n",
    );
    let auditor = "[[role]]\nname = \"auditor\"\npermissions = [\"recordings.read\"]\n\n\
                   [[binding]]\nuser = \"admin\"\nroles = [\"auditor\"]\n";
    for (file, text) in [("prod.toml", recorded.as_str()), ("auditor.toml", auditor)] {
        let (status, body) = w.server.write_policy(file, text).await;
        assert!(status.is_success(), "{file}: {body}");
    }

    let mut child = w.spawn_ssh(&["-tt", "bastion"]);
    child.stdin.take().unwrap().write_all(b"echo typed-$((6*7)); exit\n").unwrap();
    let (out, _) = wait_output(child, Duration::from_secs(30));
    assert!(out.status.success(), "{}\n{}", text(&out), w.server.log());
    assert!(String::from_utf8_lossy(&out.stderr).contains("this session is recorded"), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("typed-42"), "{}", text(&out));

    let recordings = async || {
        for _ in 0..100 {
            let (status, list) = w.server.get_json(Some(&w.admin), "/v1/admin/recordings").await;
            assert_eq!(status, StatusCode::OK, "{list}");
            let list = list.as_array().unwrap().clone();
            if !list.is_empty() && list.iter().all(|r| r["ended_at"].is_u64()) {
                return list;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the recording never ended")
    };
    let list = recordings().await;
    assert_eq!(list.len(), 1, "{list:?}");
    let id = list[0]["session_id"].as_str().unwrap();
    assert_eq!((list[0]["mode"].as_str(), list[0]["truncated"].as_bool()), (Some("terminated"), Some(false)));
    let (status, cast) = w.server.get_text(Some(&w.admin), &format!("/v1/admin/recordings/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{cast}");
    let events: Vec<(f64, String, String)> = cast.lines().skip(1).map(|l| serde_json::from_str(l).unwrap()).collect();
    let of = |code: &str| events.iter().filter(|e| e.1 == code).map(|e| e.2.as_str()).collect::<String>();
    assert!(of("o").contains("typed-42"), "{cast}");
    assert!(of("i").contains("echo typed-$((6*7)); exit"), "{cast}");
    assert!(events.windows(2).all(|p| p[0].0 <= p[1].0), "in time order: {cast}");
    // The CLI lists, exports (the same file) and plays it back; each fetch is audited.
    let cli = portcullis_tests::cli::AdminCli::login(&w.server).await;
    let listed = cli.run(&["admin", "recordings", "list", "--user", "alice"], "");
    assert!(listed.contains(id) && listed.contains("keystrokes"), "{listed}");
    assert!(!cli.run(&["admin", "recordings", "list", "--device", "pve02"], "").contains(id));
    assert_eq!(cli.run(&["admin", "recordings", "export", id], ""), cast);
    let played = cli.run(&["admin", "recordings", "play", id, "--speed", "100"], "");
    assert!(played.contains("typed-42"), "{played}");
    let audited = w.server.audit_events("recording_played").await;
    assert_eq!(audited.len(), 3, "{audited:?}");

    // Jump mode cannot be recorded: refused, and the user is told why (what `-J` runs:
    // `ssh -W`, whose channel refusal OpenSSH logs at INFO).
    let target = format!("{}:22", w.node.ip);
    let out = w.run("ssh", &["-o", "LogLevel=INFO", "-W", &target, "jump"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("recorded"), "{}", text(&out));
    let denied = w.server.audit_events("session_denied").await;
    assert!(denied.iter().any(|d| d.payload["reason"] == "recording_needs_terminated_mode"), "{denied:?}");

    // Over the limit, the rule closes the session.
    let child = w.spawn_ssh(&["bastion", "head -c 3000000 /dev/zero | od -v"]);
    let (out, _) = wait_output(child, Duration::from_secs(60));
    assert!(String::from_utf8_lossy(&out.stderr).contains("recording reached its size limit"), "{}", text(&out));
    w.server.await_audit("session_closed", |c| c.payload["reason"] == "recording_limit").await;
    let list = recordings().await;
    let cut = list.iter().find(|r| r["session_id"] != id).unwrap();
    assert_eq!(cut["truncated"], true, "{cut}");
    let bytes = cut["bytes"].as_u64().unwrap();
    assert!(bytes <= 1 << 20, "{bytes}");
    assert!(!w.server.audit_events("recording_truncated").await.is_empty());

    // A rule that stops recording at the limit lets the session go on: all the output
    // arrives, the recording ends where the limit was.
    let _pve02 = add_node(&w.server, &w.admin, "pve02", &loopback_ip(), None, None).await;
    let stop = "[[rule]]\nname = \"a-recorded-stop\"\npurpose = \"ssh_login\"\ntargets = 'in:devices name:pve02'\n\
                scope = { agents = [\"local\"] }\nrecord = true\nrecord_max_mib = 1\n";
    let (status, body) = w.server.write_policy("stop.toml", stop).await;
    assert!(status.is_success(), "{body}");
    w.add_host("pve02", "root%pve02");
    // The agent learns of a new node within a few seconds.
    for attempt in 0.. {
        let out = w.run("ssh", &["pve02", "true"]);
        if out.status.success() {
            break;
        }
        assert!(attempt < 40, "pve02 never became reachable: {}", text(&out));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let out = w.run("ssh", &["pve02", "head -c 3000000 /dev/zero | od -v"]);
    assert!(out.status.success() && out.stdout.len() > 2 << 20, "{}", String::from_utf8_lossy(&out.stderr));
    let list = recordings().await;
    let stopped: Vec<_> = list.iter().filter(|r| r["device"] == "pve02").collect();
    let big = stopped.iter().find(|r| r["truncated"] == true).expect("the long one is cut");
    assert!(big["bytes"].as_u64().unwrap() <= 1 << 20, "{big}");

    // A command given on the ssh command line is input too: recorded under a rule that
    // records input (`ssh host 'cmd; history -c'` must not leave only its output).
    let before: Vec<String> = list.iter().map(|r| r["session_id"].as_str().unwrap().to_owned()).collect();
    let out = w.run("ssh", &["bastion", "echo exec-$((2*21))"]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("exec-42"), "{}", text(&out));
    let list = recordings().await;
    let exec = list.iter().find(|r| !before.contains(&r["session_id"].as_str().unwrap().to_owned())).unwrap();
    let path = format!("/v1/admin/recordings/{}", exec["session_id"].as_str().unwrap());
    let (status, cast) = w.server.get_text(Some(&w.admin), &path).await;
    assert_eq!(status, StatusCode::OK, "{cast}");
    let events: Vec<(f64, String, String)> = cast.lines().skip(1).map(|l| serde_json::from_str(l).unwrap()).collect();
    let typed: String = events.iter().filter(|e| e.1 == "i").map(|e| e.2.as_str()).collect();
    assert!(typed.contains("echo exec-$((2*21))"), "{cast}");
}

/// In Chromium: a console under a recorded rule says so in its status line; the
/// auditor finds the recording on the admin page and plays it in asciinema-player, on a
/// page whose CSP allows WebAssembly and nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_console_is_announced_and_plays_back_in_the_browser() {
    use portcullis_tests::bastion_world::{CONSOLE_POLICY, PASSWORD as ALICE_PASSWORD, World};
    use portcullis_tests::browser::{run_script, screenshots};
    let w = World::start("15m").await;
    // Rules match by name, first to last: this one comes before the all-in-one's own.
    let console = CONSOLE_POLICY
        .replace("scope = { agents = [\"local\"] }\n", "scope = { agents = [\"local\"] }\nrecord = true\n")
        .replace("name = \"prod-consoles\"", "name = \"audited-consoles\"");
    assert_ne!(console, CONSOLE_POLICY);
    let auditor = "[[role]]\nname = \"auditor\"\npermissions = [\"recordings.read\"]\n\n\
                   [[binding]]\nuser = \"admin\"\nroles = [\"auditor\"]\n";
    for (file, text) in [("console.toml", console.as_str()), ("auditor.toml", auditor)] {
        let (status, body) = w.server.write_policy(file, text).await;
        assert!(status.is_success(), "{file}: {body}");
    }
    let report = run_script(
        "recording.mjs",
        &json!({
            "url": w.server.url,
            "user": "alice",
            "password": ALICE_PASSWORD,
            "device": "pve01",
            "auditor": "admin",
            "auditor_password": w.server.admin_password().await,
            "screenshot": screenshots().join("recording.png"),
        }),
    );
    assert!(report.get("error").is_none() && report.get("page_errors").is_none(), "{report:#}\n{}", w.server.log());
    assert!(report.get("console_errors").is_none(), "{report:#}");
    assert_eq!(report["steps"], json!(["recorded_console", "played"]), "{report:#}");
    assert!(report["console_status"].as_str().unwrap().contains("this session is recorded"), "{report:#}");
    assert!(report["tabs"].as_array().unwrap().iter().any(|t| t == "Recordings"), "{report:#}");
    assert_eq!(report["title"], "alice as root on pve01", "{report:#}");
    assert_eq!(report["played"], true);
    let csp = report["csp"].as_str().unwrap();
    assert!(csp.contains("script-src 'self' 'wasm-unsafe-eval';") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(report["a11y"], json!([]), "axe-core, serious or critical: {report:#}");
    let played = w.server.audit_events("recording_played").await;
    assert!(played.iter().any(|p| p.payload["actor"] == "admin" && p.payload["user"] == "alice"), "{played:?}");
}
