//! A directory that hangs while its users have live sessions: heartbeats stay quick and nothing closes.

use super::*;
use portcullis_ca::Clock;
use portcullis_proto::UserCertRequest;
use serde_json::json;

const IP: &str = SESSION_IP;
const USERS: [&str; 5] = ["dave", "erin", "frank", "gina", "hugo"];

/// Five directory users in `staff`, each with a live terminated session through one
/// bastion. Then slapd stops answering (SIGSTOP: connections are accepted, questions
/// hang) just before their accounts are due to be asked about again. The bastion's
/// heartbeat must still answer well inside its 10 s call timeout — fifteen seconds of
/// questions asked one after another made it fail, and after 15 s without a heartbeat the
/// bastion closes every session it carries, local users' included — and must close
/// nothing: an outage stops new sessions, it does not end live ones. The next heartbeat
/// does not wait for the directory again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_directory_neither_stalls_heartbeats_nor_ends_live_sessions() {
    let slapd = directory();
    let mut people = String::new();
    for user in USERS {
        people += &format!(
            "dn: uid={user},ou=people,{SUFFIX}\nobjectClass: inetOrgPerson\nuid: {user}\ncn: {user}\nsn: {user}\n\
             userPassword: {user}-password\n\n"
        );
    }
    slapd.ldapadd(&people);
    let members: String = USERS.iter().map(|u| format!("member: uid={u},ou=people,{SUFFIX}\n")).collect();
    slapd.ldapmodify(&format!("dn: cn=staff,ou=groups,{SUFFIX}\nchangetype: modify\nadd: member\n{members}"));

    // A patient directory configuration: its own timeout would not end a question for
    // 20 s, so only the heartbeat's deadline does.
    let table = ldap_table(&slapd, "").replace("operation_timeout = \"3s\"", "operation_timeout = \"20s\"");
    let table: LdapToml = toml::from_str(&table).unwrap();
    let SessionWorld { ca, api, clock, bastion, _dir } =
        session_world(LdapSource::new(table.validate().unwrap())).await;

    let mut sessions = Vec::new();
    for user in USERS {
        let token = ca
            .identity()
            .login_password(user, None, &SecretString::from(format!("{user}-password")), IP)
            .await
            .unwrap()
            .token
            .expose()
            .to_owned();
        let caller = ca.identity().caller(&token).await.unwrap();
        let key = ed25519_key();
        let request = UserCertRequest { public_key: public_line(&key), ..Default::default() };
        let issued = ca.issuance().issue(&caller, &request, IP).await.unwrap();
        let cert = ssh_key::Certificate::from_openssh(&issued.certificate).unwrap();
        let connection = portcullis_sshcert::random_bytes::<32>();
        let id = hex::encode(portcullis_sshcert::random_bytes::<16>());
        let body = json!({
            "session_id": id, "mode": "terminated", "cert_serial": issued.serial.to_string(),
            "certificate_digest": portcullis_sshcert::certificate_digest(&cert), "login": "staff", "device": "pve01",
            "client_ip": IP, "session_public_key": public_line(&ed25519_key()),
            "connection_proof": portcullis_tests::ssh::connection_proof(&key, &cert, "staff%pve01", &connection),
        });
        let (status, v) = api.post_json(Some(&bastion), "/v1/bastion/sessions/open", &body).await;
        assert_eq!(status, StatusCode::OK, "{user}: {v}");
        sessions.push(json!({"session_id": id, "bytes_from_client": 0, "bytes_to_client": 0}));
    }
    let body = json!({"sessions": sessions, "agents": []});
    // One heartbeat as the bastion sends it: its close orders, and how long it took.
    let heartbeat = || async {
        let started = Instant::now();
        let (status, v) = api.post_json(Some(&bastion), "/v1/bastion/heartbeat", &body).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        (v["close"].clone(), started.elapsed())
    };
    assert_eq!(heartbeat().await.0, json!([]), "the directory vouches for everyone");

    slapd.freeze();
    // Ten seconds apart, as bastions send them; the accounts fall due at 60 s.
    for step in 1..=9 {
        clock.set(clock.now_unix() + 10);
        let (close, took) = heartbeat().await;
        assert_eq!(close, json!([]), "a directory outage ended live sessions (heartbeat {step})");
        assert!(
            took < Duration::from_secs(6),
            "heartbeat {step} took {took:?}: the bastion gives up at 10 s and then closes every session"
        );
        if step > 6 {
            assert!(took < Duration::from_secs(2), "heartbeat {step} waited for the hung directory again ({took:?})");
        }
    }
    slapd.thaw();
}
