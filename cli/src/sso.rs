//! Single sign-on from a terminal: the OAuth device authorization grant, run by the CA
//! on our behalf. We only show the user where to go and poll the CA; the IdP's device
//! code never reaches this machine.

use crate::api::Api;
use crate::shared::printable;
use anyhow::bail;
use indicatif::ProgressBar;
use portcullis_proto::LoginResponse;
use portcullis_proto::oidc::{DevicePoll, DevicePollRequest, DeviceStart, DeviceStartRequest};
use std::time::{Duration, Instant};

/// Bounds on what the CA (for the identity provider) may ask of the polling: numbers it
/// sends are clamped, not trusted (an interval of `u64::MAX` overflowed, a huge
/// `expires_in` panicked computing the deadline).
const MAX_INTERVAL: u64 = 60;
const MAX_WAIT: u64 = 3600;

/// `fresh`: the identity provider must ask for the password again (a step-up).
pub async fn device_login(api: &Api, fresh: bool) -> anyhow::Result<LoginResponse> {
    let start: DeviceStart = api.post("/v1/auth/oidc/device", &DeviceStartRequest { fresh }).await?;
    // What the identity provider says, through the CA: shown, never interpreted by the
    // terminal (an OSC 8 link could show one address and open another).
    println!("To sign in, open {} in a browser (on any device)", printable(&start.verification_uri));
    println!("and enter the code: {}", printable(&start.user_code));
    if let Some(complete) = &start.verification_uri_complete {
        println!("(or open {}, which has the code filled in)", printable(complete));
    }
    // indicatif draws only on a terminal; headless, the messages above are all there is.
    let spinner = ProgressBar::new_spinner();
    spinner.set_message("waiting for you to sign in at the identity provider…");
    spinner.enable_steady_tick(Duration::from_millis(120));
    let mut interval = start.interval.clamp(1, MAX_INTERVAL);
    // The CA answers `expired_token` at the deadline; the margin covers a CA that cannot.
    let give_up = Instant::now() + Duration::from_secs(start.expires_in.min(MAX_WAIT).saturating_add(60));
    let request = DevicePollRequest { handle: start.handle };
    let outcome = loop {
        tokio::time::sleep(Duration::from_secs(interval)).await;
        if Instant::now() > give_up {
            break Err(anyhow::anyhow!("the sign-in code expired; run `portcullis login` again"));
        }
        let poll: DevicePoll = match api.post("/v1/auth/oidc/device/poll", &request).await {
            Ok(p) => p,
            Err(e) => break Err(e),
        };
        match poll {
            DevicePoll::Pending { interval: i } => interval = i.clamp(1, MAX_INTERVAL),
            DevicePoll::SlowDown { interval: i } => {
                interval = i.max(interval.saturating_add(1)).min(MAX_INTERVAL);
                spinner.set_message(format!("waiting (the identity provider asked to poll every {interval} s)…"));
            }
            DevicePoll::AccessDenied => {
                break Err(anyhow::anyhow!("sign-in was refused at the identity provider (access_denied)"));
            }
            DevicePoll::ExpiredToken => {
                break Err(anyhow::anyhow!(
                    "the sign-in code expired before it was used (expired_token); run `portcullis login` again"
                ));
            }
            DevicePoll::Success(session) => break Ok(session),
        }
    };
    spinner.finish_and_clear();
    match outcome {
        Ok(session) => Ok(session),
        Err(e) => bail!(e),
    }
}
