//! Token login (`[tokens]`): JWTs from an app's account service as the MQTT password,
//! checked over real sockets: signature and algorithm per key (HMAC secret, EC public key
//! in PEM, JWKS by `kid`), `exp`/`nbf` with leeway, `aud`/`iss`, the subject as the user,
//! the operator role from a claim; revocation through the admin API, kept across a
//! restart; reloads (admin API here, SIGHUP on the broker process).

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tern_codec::{ByteString, Connect, Protocol, ReasonCode};
use tern_conformance::chat::{publish, subscribe_all};
use tern_conformance::{eventually, Broker, BrokerProcess, RawClient};

const BROKER: &str = env!("CARGO_BIN_EXE_tern-test-broker");
const SECRET: &[u8] = b"a-shared-secret-of-the-account-service";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// The account service's keys, and the files the broker reads.
struct Keys {
    dir: tempfile::TempDir,
    /// ES256 key whose public half is in a PEM file.
    pem_key: rcgen::KeyPair,
    /// ES256 key published in the JWKS file as `k2`.
    jwks_key: rcgen::KeyPair,
}

impl Keys {
    fn new() -> Keys {
        let dir = tempfile::tempdir().expect("dir");
        let pem_key = rcgen::KeyPair::generate().expect("EC key");
        let jwks_key = rcgen::KeyPair::generate().expect("EC key");
        std::fs::write(dir.path().join("secret"), [SECRET, b"\n"].concat()).expect("write");
        std::fs::write(dir.path().join("ec.pem"), pem_key.public_key_pem()).expect("write");
        // An uncompressed P-256 point: 0x04, x, y.
        let point = jwks_key.public_key_raw();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwks = json!({"keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": "k2",
            "x": b64(&point[1..33]), "y": b64(&point[33..65]),
        }]});
        std::fs::write(dir.path().join("jwks.json"), jwks.to_string()).expect("write");
        // An RSA key pair, made by openssl as an account service would.
        let rsa = dir.path().join("rsa.key");
        let openssl = |args: &[&str]| {
            let status = std::process::Command::new("openssl")
                .args(args)
                .status()
                .expect("openssl");
            assert!(status.success(), "openssl {args:?}");
        };
        let rsa_key = rsa.to_str().expect("utf-8 path");
        openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            rsa_key,
        ]);
        let rsa_pub = dir.path().join("rsa.pem");
        openssl(&[
            "pkey",
            "-in",
            rsa_key,
            "-pubout",
            "-out",
            rsa_pub.to_str().expect("utf-8 path"),
        ]);
        Keys {
            dir,
            pem_key,
            jwks_key,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn configure(&self, config: &mut tern::config::Config) {
        let t = &mut config.tokens;
        t.enabled = true;
        t.hmac_secret_file = Some(self.path("secret"));
        t.public_key_files = vec![self.path("ec.pem"), self.path("rsa.pem")];
        t.jwks_file = Some(self.path("jwks.json"));
        t.audience = Some("chat-app".into());
        t.issuer = Some("accounts".into());
        // Nobody gets in without credentials: a refused token cannot pass as anonymous.
        config.allow_anonymous = tern::config::AnonymousPolicy::Never;
    }
}

/// Claims a valid token for `sub` has, with `extra` merged over them.
fn claims(sub: &str, extra: Value) -> Value {
    let mut c = json!({"sub": sub, "exp": now() + 600, "aud": "chat-app", "iss": "accounts"});
    if let (Some(c), Value::Object(extra)) = (c.as_object_mut(), extra) {
        c.extend(extra);
    }
    c
}

fn hs256(secret: &[u8], claims: &Value) -> String {
    let key = EncodingKey::from_secret(secret).expect("HMAC key");
    encode(&Header::new(Algorithm::HS256), claims, &key).expect("sign")
}

fn rsa(keys: &Keys, alg: Algorithm, claims: &Value) -> String {
    let pem = std::fs::read(keys.path("rsa.key")).expect("RSA key");
    let key = EncodingKey::from_rsa_pem(&pem).expect("RSA key");
    encode(&Header::new(alg), claims, &key).expect("sign")
}

fn es256(key: &rcgen::KeyPair, kid: Option<&str>, claims: &Value) -> String {
    let key = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).expect("EC key");
    let mut header = Header::new(Algorithm::ES256);
    header.kid = kid.map(str::to_string);
    encode(&header, claims, &key).expect("sign")
}

/// CONNECT with the token as password (and `user` as user name, if given).
async fn login(
    addr: std::net::SocketAddr,
    protocol: Protocol,
    client_id: &str,
    user: Option<&str>,
    token: &str,
) -> (RawClient, ReasonCode) {
    let token = bytes::Bytes::copy_from_slice(token.as_bytes());
    let user = user.map(ByteString::from);
    let (client, ack) = RawClient::open(addr, protocol, client_id, true, |c: &mut Connect| {
        c.username = user;
        c.password = Some(token);
    })
    .await;
    (client, ack.code)
}

async fn code(broker: &Broker, user: Option<&str>, token: &str) -> ReasonCode {
    login(broker.addr, Protocol::V5, "phone", user, token)
        .await
        .1
}

#[tokio::test]
async fn tokens_are_checked_for_key_algorithm_time_audience_and_subject() {
    let keys = Keys::new();
    let broker = Broker::start_with(|c| keys.configure(c)).await;
    let ok = ReasonCode::Success;
    let bad = ReasonCode::BadUserNameOrPassword;
    let t = now();

    let valid = hs256(SECRET, &claims("alice", json!({})));
    assert_eq!(code(&broker, None, &valid).await, ok, "HS256, no user name");
    assert_eq!(
        code(&broker, Some("alice"), &valid).await,
        ok,
        "user name = subject"
    );
    assert_eq!(
        code(&broker, Some("bob"), &valid).await,
        bad,
        "user name != subject"
    );
    // 3.1.1's 0x04 for the same refusal (decoded as its 5.0 equivalent).
    let (_, v4) = login(broker.addr, Protocol::V311, "phone", Some("bob"), &valid).await;
    assert_eq!(v4, bad);

    for (what, extra, expected) in [
        ("expired", json!({"exp": t - 600}), bad),
        ("expired within the leeway", json!({"exp": t - 30}), ok),
        ("not yet valid", json!({"nbf": t + 600}), bad),
        ("valid from now", json!({"nbf": t}), ok),
        ("another audience", json!({"aud": "other-app"}), bad),
        (
            "one of several audiences",
            json!({"aud": ["x", "chat-app"]}),
            ok,
        ),
        ("another issuer", json!({"iss": "elsewhere"}), bad),
        ("a subject that is no user id", json!({"sub": "a/b"}), bad),
    ] {
        let token = hs256(SECRET, &claims("alice", extra));
        assert_eq!(code(&broker, None, &token).await, expected, "{what}");
    }
    let mut no_audience = claims("alice", json!({}));
    no_audience.as_object_mut().expect("object").remove("aud");
    assert_eq!(
        code(&broker, None, &hs256(SECRET, &no_audience)).await,
        bad,
        "no aud"
    );
    let mut no_exp = claims("alice", json!({}));
    no_exp.as_object_mut().expect("object").remove("exp");
    assert_eq!(
        code(&broker, None, &hs256(SECRET, &no_exp)).await,
        bad,
        "no exp"
    );

    let forged = hs256(
        b"not-the-account-service-secret",
        &claims("alice", json!({})),
    );
    assert_eq!(code(&broker, None, &forged).await, bad, "another secret");
    // The EC public key is public: an HS256 token keyed with it must not pass.
    let confused = hs256(
        keys.pem_key.public_key_pem().as_bytes(),
        &claims("alice", json!({})),
    );
    assert_eq!(
        code(&broker, None, &confused).await,
        bad,
        "algorithm confusion"
    );

    let rs = rsa(&keys, Algorithm::RS256, &claims("alice", json!({})));
    assert_eq!(code(&broker, None, &rs).await, ok, "RS256, PEM key");
    let ps = rsa(&keys, Algorithm::PS256, &claims("alice", json!({})));
    assert_eq!(
        code(&broker, None, &ps).await,
        ok,
        "PS256, the same RSA key"
    );
    // The RSA public key is public too: no HS256 token keyed with it passes.
    let rsa_pub = std::fs::read(keys.path("rsa.pem")).expect("RSA public key");
    let confused = hs256(&rsa_pub, &claims("alice", json!({})));
    assert_eq!(
        code(&broker, None, &confused).await,
        bad,
        "RSA algorithm confusion"
    );
    let ec = es256(&keys.pem_key, None, &claims("alice", json!({})));
    assert_eq!(code(&broker, None, &ec).await, ok, "ES256, PEM key");
    let jwks = es256(&keys.jwks_key, Some("k2"), &claims("alice", json!({})));
    assert_eq!(code(&broker, None, &jwks).await, ok, "ES256, JWKS key k2");
    // A token naming k2 is checked with k2 only.
    let wrong_kid = es256(&keys.pem_key, Some("k2"), &claims("alice", json!({})));
    assert_eq!(
        code(&broker, None, &wrong_kid).await,
        bad,
        "kid names another key"
    );

    // Tokens and passwords side by side.
    let (status, body) = broker
        .api(
            "POST",
            "/v1/users",
            Some(json!({"user": "carol", "password": "carol-password"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (_, ack) = RawClient::open(broker.addr, Protocol::V5, "carol-1", true, |c| {
        c.username = Some("carol".into());
        c.password = Some(bytes::Bytes::from_static(b"carol-password"));
    })
    .await;
    assert_eq!(ack.code, ok, "password login still works");
    let carol = hs256(SECRET, &claims("carol", json!({})));
    assert_eq!(
        code(&broker, Some("carol"), &carol).await,
        ok,
        "a user with a password may use a token"
    );

    // The subject is who sends: a DM from the token's user is stamped with it, and the
    // role claim grants broadcasts.
    let (mut bob, c) = login(
        broker.addr,
        Protocol::V5,
        "bob-1",
        None,
        &hs256(SECRET, &claims("bob", json!({}))),
    )
    .await;
    assert_eq!(c, ok);
    subscribe_all(&mut bob, &["inbox/bob/#"]).await;
    let (mut alice, c) = login(broker.addr, Protocol::V5, "alice-1", None, &valid).await;
    assert_eq!(c, ok);
    assert_eq!(
        publish(&mut alice, 1, "dm/bob", "hi", &[("from", "mallory")]).await,
        ok
    );
    let dm = bob.expect_publish("the DM").await;
    assert_eq!(
        tern_conformance::chat::prop(&dm, "from").as_deref(),
        Some("alice")
    );
    assert_eq!(
        publish(&mut alice, 2, "broadcast/news", "x", &[]).await,
        ReasonCode::NotAuthorized,
        "no role claim: no broadcast"
    );
    let operator = hs256(
        SECRET,
        &claims("ops", json!({"tern_role": ["support", "operator"]})),
    );
    let (mut ops, c) = login(broker.addr, Protocol::V5, "ops-1", None, &operator).await;
    assert_eq!(c, ok);
    let reason = publish(&mut ops, 1, "broadcast/news", "x", &[]).await;
    assert!(
        !reason.is_error(),
        "the operator role claim allows broadcasts: {reason:?}"
    );

    // A reload that fails leaves the keys in force; one that succeeds replaces them.
    std::fs::write(keys.path("secret"), b"short").expect("write");
    let (status, body) = broker.api("POST", "/v1/access/reload", None).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap_or("").contains("secret"),
        "{body}"
    );
    assert_eq!(
        code(&broker, None, &valid).await,
        ok,
        "old secret still in force"
    );
    std::fs::write(keys.path("secret"), b"the-rotated-secret-of-the-service").expect("write");
    let (status, body) = broker.api("POST", "/v1/access/reload", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_keys"], 4, "{body}");
    assert_eq!(code(&broker, None, &valid).await, bad, "old secret retired");
    let rotated = hs256(
        b"the-rotated-secret-of-the-service",
        &claims("alice", json!({})),
    );
    assert_eq!(code(&broker, None, &rotated).await, ok, "new secret");
    broker.stop().await;
}

#[tokio::test]
async fn revoked_tokens_are_refused_and_stay_revoked_across_a_restart() {
    let keys = Keys::new();
    let broker = Broker::start_with(|c| keys.configure(c)).await;
    let ok = ReasonCode::Success;
    let bad = ReasonCode::BadUserNameOrPassword;
    let t = now();
    let first = hs256(
        SECRET,
        &claims("alice", json!({"jti": "t-1", "iat": t - 10})),
    );
    let second = hs256(
        SECRET,
        &claims("alice", json!({"jti": "t-2", "iat": t - 10})),
    );
    assert_eq!(code(&broker, None, &first).await, ok);

    // Bad requests name what is wrong.
    for (body, needle) in [
        (json!({}), "jti or user"),
        (json!({"jti": "a", "user": "alice"}), "not both"),
        (json!({"user": "a/b"}), "user"),
        (json!({"jti": "a", "issued_before": 5}), "issued_before"),
        (json!({"jti": 5}), "request body"),
        (json!({"token": "a"}), "request body"),
    ] {
        let (status, answer) = broker
            .api("POST", "/v1/tokens/revocations", Some(body.clone()))
            .await;
        assert_eq!(status, 400, "{body} -> {answer}");
        assert!(
            answer["error"].as_str().unwrap_or("").contains(needle),
            "{body} -> {answer}"
        );
    }

    let (status, list) = broker
        .api(
            "POST",
            "/v1/tokens/revocations",
            Some(json!({"jti": "t-1", "expires_at": t + 600})),
        )
        .await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["tokens"]["t-1"], t + 600, "{list}");
    assert_eq!(code(&broker, None, &first).await, bad, "revoked by id");
    let (mut phone, c) = login(broker.addr, Protocol::V5, "alice-phone", None, &second).await;
    assert_eq!(c, ok, "another token of the user still works");

    // Revoking the user's tokens issued until now closes its connections too.
    let (status, list) = broker
        .api(
            "POST",
            "/v1/tokens/revocations",
            Some(json!({"user": "alice"})),
        )
        .await;
    assert_eq!(status, 200, "{list}");
    phone
        .expect_disconnect(
            &[ReasonCode::NotAuthorized],
            "the revoked user's connection",
        )
        .await;
    assert_eq!(
        code(&broker, None, &second).await,
        bad,
        "issued before the revocation"
    );
    let later = hs256(SECRET, &claims("alice", json!({"iat": t + 5})));
    assert_eq!(code(&broker, None, &later).await, ok, "issued after it");

    let broker = broker.restart().await;
    assert_eq!(
        code(&broker, None, &first).await,
        bad,
        "still revoked by id"
    );
    assert_eq!(
        code(&broker, None, &second).await,
        bad,
        "still revoked by user"
    );
    assert_eq!(code(&broker, None, &later).await, ok);
    let (status, list) = broker.api("GET", "/v1/tokens/revocations", None).await;
    assert_eq!(status, 200);
    assert!(
        list["users"]["alice"].as_u64().is_some_and(|at| at >= t),
        "{list}"
    );
    broker.stop().await;
}

fn write_config(dir: &Path, keys: &Keys) -> PathBuf {
    let file = dir.join("tern.toml");
    let text = format!(
        "allow_anonymous = false\n[tokens]\nenabled = true\nhmac_secret_file = {:?}\n",
        keys.path("secret").display().to_string()
    );
    std::fs::write(&file, text).expect("write config");
    file
}

#[tokio::test]
async fn sighup_reloads_the_keys_of_a_running_broker() {
    let keys = Keys::new();
    let dir = tempfile::tempdir().expect("dir");
    let config = write_config(dir.path(), &keys);
    let data = dir.path().join("data");
    let broker =
        BrokerProcess::start(BROKER, &data, &["--config", &config.display().to_string()]).await;
    let token = |secret: &[u8]| {
        let mut c = claims("alice", json!({}));
        c.as_object_mut()
            .expect("object")
            .retain(|k, _| k == "sub" || k == "exp");
        hs256(secret, &c)
    };
    let old = token(SECRET);
    let new_secret = b"the-rotated-secret-of-the-service";
    let new = token(new_secret);
    let code = |token: String| async move {
        login(broker.addr, Protocol::V5, "phone", None, &token)
            .await
            .1
    };
    assert_eq!(code(old.clone()).await, ReasonCode::Success);
    assert_eq!(code(new.clone()).await, ReasonCode::BadUserNameOrPassword);

    std::fs::write(keys.path("secret"), new_secret).expect("write");
    let status = std::process::Command::new("kill")
        .args(["-HUP", &broker.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    eventually("the rotated secret is accepted", || {
        let new = new.clone();
        async move { code(new).await == ReasonCode::Success }
    })
    .await;
    assert_eq!(code(old).await, ReasonCode::BadUserNameOrPassword);
    broker.terminate();
    let (exit, log) = broker.wait(std::time::Duration::from_secs(20)).await;
    assert!(exit.success(), "{log}");
    assert!(
        log.contains("SIGHUP: token keys and ACL file reloaded"),
        "{log}"
    );
}
