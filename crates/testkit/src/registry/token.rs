//! A Docker token service for [`super::Registry::start_token`]: the bearer-token flow of the
//! distribution spec, as Docker Hub, Harbor or GitLab run it.
//!
//! The registry answers an unauthenticated request with `401` and
//! `WWW-Authenticate: Bearer realm="http://127.0.0.1:PORT/token",service=…,scope=…`; the client
//! asks the realm for a token (`GET /token?service=…&scope=repository:NAME:pull,push`) with its
//! basic credentials and sends the request again with `Authorization: Bearer <token>`.
//!
//! [`TokenServer`] is that realm: a plain HTTP/1.1 server on a thread of its own, one thread per
//! connection, on a free `127.0.0.1` port. Wrong credentials get a `401`; no credentials get a
//! token granting nothing (so the registry refuses the request itself, as Docker Hub does for a
//! private repository); the right ones get a token granting every action asked for. A token is a
//! JWT signed with ES256 by a P-256 key made at start, named in its header by the key's libtrust
//! id (`kid`), which is how docker-registry 2.8 finds the key among the certificates of its
//! `rootcertbundle` ([`TokenServer::cert_pem`], a self-signed certificate of that key). Every
//! token given out is recorded ([`IssuedToken`]) so a test can check a client went through the
//! flow. Dropping the server stops it.

use anyhow::{Context, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::{SecureRandom as _, SystemRandom};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use sha2::{Digest as _, Sha256};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The `service` the registry names in its challenges and expects as a token's audience.
pub const SERVICE: &str = "shoal-test-registry";
/// The issuer the registry trusts.
pub const ISSUER: &str = "shoal-test-issuer";
/// How long a token is valid, in seconds.
const TOKEN_SECS: u64 = 300;
/// The largest request head read.
const MAX_HEAD: usize = 64 << 10;

/// A token the server gave out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    /// The user it was issued to; empty for an anonymous request.
    pub user: String,
    /// What it grants: `(type, name, actions)`, e.g. `("repository", "team/app", ["pull"])`.
    pub access: Vec<(String, String, Vec<String>)>,
    /// The client's `User-Agent` (`shoal/…` for an agent, `shoal-testkit` for the testkit's own
    /// requests).
    pub user_agent: String,
}

struct State {
    user: String,
    password: String,
    key: EcdsaKeyPair,
    kid: String,
    rng: SystemRandom,
    issued: Mutex<Vec<IssuedToken>>,
    stop: AtomicBool,
}

/// The running token service; see the module header.
pub struct TokenServer {
    addr: SocketAddr,
    cert_pem: String,
    state: Arc<State>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TokenServer {
    /// Makes a signing key and its certificate and starts serving on a free port; only `user`
    /// with `password` is granted anything.
    pub fn start(user: &str, password: &str) -> anyhow::Result<TokenServer> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| anyhow::anyhow!("generating a P-256 key"))?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|e| anyhow::anyhow!("loading the P-256 key: {e}"))?;
        let cert_key = rcgen::KeyPair::try_from(pkcs8.as_ref()).context("the P-256 key for rcgen")?;
        let kid = libtrust_key_id(&cert_key.public_key_der());
        let cert = rcgen::CertificateParams::new(vec!["shoal-test-token-issuer".to_string()])?
            .self_signed(&cert_key)
            .context("self-signing the token certificate")?;
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding the token server")?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            user: user.to_string(),
            password: password.to_string(),
            key,
            kid,
            rng,
            issued: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let serving = state.clone();
        let thread = std::thread::Builder::new()
            .name("testkit-token-server".into())
            .spawn(move || serve(&listener, &serving))
            .context("starting the token server thread")?;
        Ok(TokenServer { addr, cert_pem: cert.pem(), state, thread: Some(thread) })
    }

    /// `http://127.0.0.1:PORT/token`, the realm of the registry's challenges.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// The PEM certificate of the signing key, for the registry's `rootcertbundle`.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The tokens given out so far, oldest first.
    pub fn issued(&self) -> Vec<IssuedToken> {
        self.state.issued.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A token for `scope` (as a challenge names it) with `user`/`password`, as a client gets it.
    pub fn fetch(&self, scope: &str, user: &str, password: &str) -> anyhow::Result<String> {
        let path = format!("/token?{}", token_query(scope));
        let auth = super::basic_auth(user, password);
        let r = super::http_request(self.addr, "GET", &path, &[("Authorization", &auth)], b"")?;
        ensure!(r.status == 200, "token server answered {}: {}", r.status, r.text());
        r.json()?["token"].as_str().map(str::to_string).context("token server answered without a token")
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(listener: &TcpListener, state: &Arc<State>) {
    for conn in listener.incoming() {
        if state.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = conn else { continue };
        let state = state.clone();
        // A connection that fails only fails its client.
        let _ = std::thread::Builder::new().name("testkit-token-conn".into()).spawn(move || {
            let _ = handle(stream, &state);
        });
    }
}

/// Reads one request and answers it; the connection is closed after.
fn handle(mut s: TcpStream, state: &State) -> anyhow::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        ensure!(head.len() <= MAX_HEAD, "request head over {MAX_HEAD} bytes");
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let mut request = lines.next().unwrap_or_default().split(' ');
    let (method, target) = (request.next().unwrap_or_default(), request.next().unwrap_or_default());
    let header = |name: &str| {
        head.split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
    };
    let (status, body) = answer(state, method, target, header("authorization"), header("user-agent"));
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Method Not Allowed",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status == 401 {
        out.push_str("WWW-Authenticate: Basic realm=\"shoal-test-token\"\r\n");
    }
    out.push_str("\r\n");
    s.write_all(out.as_bytes())?;
    s.write_all(body.as_bytes())?;
    Ok(())
}

/// The status and JSON body for one request.
fn answer(
    state: &State,
    method: &str,
    target: &str,
    authorization: Option<String>,
    user_agent: Option<String>,
) -> (u16, String) {
    let error = |status: u16, code: &str, message: &str| {
        (status, serde_json::json!({"errors": [{"code": code, "message": message}]}).to_string())
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path != "/token" {
        return error(404, "NOT_FOUND", "the token endpoint is /token");
    }
    if method != "GET" {
        return error(405, "UNSUPPORTED", "tokens are fetched with GET");
    }
    let params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    let service = params.iter().find(|(k, _)| k == "service").map(|(_, v)| v.as_str());
    if service != Some(SERVICE) {
        return error(400, "INVALID_REQUEST", &format!("unknown service {service:?}, this is {SERVICE}"));
    }
    let user = match authorization {
        None => String::new(),
        Some(a) => match basic_credentials(&a) {
            Some((u, p)) if u == state.user && p == state.password => u,
            _ => return error(401, "UNAUTHORIZED", "wrong user name or password"),
        },
    };
    // One `scope` parameter each, several resources or actions in one are allowed too.
    let mut access = Vec::new();
    if !user.is_empty() {
        for scope in params.iter().filter(|(k, _)| k == "scope").flat_map(|(_, v)| v.split(' ')) {
            let Some((kind, rest)) = scope.split_once(':') else { continue };
            let Some((name, actions)) = rest.rsplit_once(':') else { continue };
            let actions: Vec<String> = actions.split(',').filter(|a| !a.is_empty()).map(str::to_string).collect();
            access.push((kind.to_string(), name.to_string(), actions));
        }
    }
    match sign(state, &user, &access) {
        Ok(jwt) => {
            state.issued.lock().unwrap_or_else(|e| e.into_inner()).push(IssuedToken {
                user,
                access,
                user_agent: user_agent.unwrap_or_default(),
            });
            let body = serde_json::json!({"token": jwt, "access_token": jwt, "expires_in": TOKEN_SECS});
            (200, body.to_string())
        }
        Err(e) => error(500, "SIGNING", &e.to_string()),
    }
}

/// A JWT (ES256) for `user` granting `access`, as docker-registry 2.8's token auth checks it:
/// `iss`, `aud` (a string), `exp` and `nbf` with a minute's leeway, the key found by `kid`.
fn sign(state: &State, user: &str, access: &[(String, String, Vec<String>)]) -> anyhow::Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut jti = [0u8; 16];
    state.rng.fill(&mut jti).map_err(|_| anyhow::anyhow!("no randomness for a jti"))?;
    let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "kid": state.kid});
    let claims = serde_json::json!({
        "iss": ISSUER,
        "sub": user,
        "aud": SERVICE,
        "exp": now + TOKEN_SECS,
        "nbf": now,
        "iat": now,
        "jti": hex::encode(jti),
        "access": access
            .iter()
            .map(|(kind, name, actions)| serde_json::json!({"type": kind, "name": name, "actions": actions}))
            .collect::<Vec<_>>(),
    });
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header)?),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims)?)
    );
    // FIXED signing: r || s, 64 bytes, which is what JWS ES256 wants (not ASN.1 DER).
    let sig = state.key.sign(&state.rng, signed.as_bytes()).map_err(|_| anyhow::anyhow!("signing a token"))?;
    Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref())))
}

/// libtrust's key id of a public key: the SHA-256 of its DER SubjectPublicKeyInfo, its first
/// 30 bytes in base32 (no padding, 48 characters), in 12 groups of 4 joined by `:`.
fn libtrust_key_id(spki_der: &[u8]) -> String {
    let b32 = data_encoding::BASE32_NOPAD.encode(&Sha256::digest(spki_der)[..30]);
    b32.as_bytes().chunks(4).map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>().join(":")
}

/// `(user, password)` of a `Basic` authorization header.
fn basic_credentials(header: &str) -> Option<(String, String)> {
    let (scheme, b64) = header.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let text = String::from_utf8(STANDARD.decode(b64.trim()).ok()?).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

/// The query a client sends the token service for `scope` (form-encoded, as Docker's clients do).
fn token_query(scope: &str) -> String {
    form_urlencoded::Serializer::new(String::new()).append_pair("service", SERVICE).append_pair("scope", scope).finish()
}

/// The `key="value"` parameters of a `WWW-Authenticate: Bearer …` challenge (values may hold
/// commas inside their quotes); `None` if it is not a Bearer challenge.
pub(super) fn bearer_params(challenge: &str) -> Option<Vec<(String, String)>> {
    let (scheme, rest) = challenge.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut params = Vec::new();
    let mut rest = rest.trim_start();
    while let Some((key, after)) = rest.split_once('=') {
        let key = key.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let (value, after) = match after.strip_prefix('"') {
            Some(quoted) => {
                let end = quoted.find('"')?;
                (&quoted[..end], &quoted[end + 1..])
            }
            None => after.split_once(',').unwrap_or((after, "")),
        };
        params.push((key, value.to_string()));
        rest = after.trim_start().trim_start_matches(',');
    }
    Some(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_are_libtrust_fingerprints() {
        let kid = libtrust_key_id(b"any public key");
        let groups: Vec<&str> = kid.split(':').collect();
        assert_eq!(groups.len(), 12, "{kid}");
        assert!(groups.iter().all(|g| g.len() == 4 && g.bytes().all(|c| matches!(c, b'A'..=b'Z' | b'2'..=b'7'))));
    }

    #[test]
    fn percent_coding_round_trips() {
        let scope = "repository:team/app:pull,push";
        let query = token_query(scope);
        assert!(query.ends_with("&scope=repository%3Ateam%2Fapp%3Apull%2Cpush"), "{query}");
        let decoded: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes()).into_owned().collect();
        assert_eq!(decoded[1], ("scope".to_string(), scope.to_string()));
        let odd: Vec<(String, String)> = form_urlencoded::parse(b"a+b%2").into_owned().collect();
        assert_eq!(odd[0].0, "a b%2");
    }

    #[test]
    fn parses_bearer_challenges() {
        let c = r#"Bearer realm="http://127.0.0.1:1/token",service="s",scope="repository:a/b:pull,push""#;
        let p = bearer_params(c).unwrap();
        assert_eq!(p[0], ("realm".into(), "http://127.0.0.1:1/token".into()));
        assert_eq!(p[2], ("scope".into(), "repository:a/b:pull,push".into()));
        assert!(bearer_params(r#"Basic realm="x""#).is_none());
    }
}
