//! RFC 8291 message encryption for Web Push, in the RFC 8188 `aes128gcm` content coding.
//!
//! The application server (us) makes a fresh ECDH key pair and a fresh 16-byte salt for
//! every message, combines the shared secret with the browser's authentication secret,
//! and sends exactly one record: `salt ‖ rs ‖ idlen ‖ keyid(our public key) ‖ record`.
//! [`decrypt`] is the browser's side; the local receiver uses it to check what we sent.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes128Gcm, aead};
use hkdf::Hkdf;
use p256::elliptic_curve::Generate;
use p256::elliptic_curve::sec1::ToSec1Point;
use p256::{PublicKey, SecretKey};
use sha2_next::Sha256;

/// The record size we announce (RFC 8291 §4 recommends 4096).
pub const RECORD_SIZE: u32 = 4096;
/// Salt length in octets.
const SALT_LEN: usize = 16;
/// Length of an uncompressed P-256 point.
const POINT_LEN: usize = 65;
/// `salt ‖ rs(4) ‖ idlen(1) ‖ keyid(65)`.
const HEADER_LEN: usize = SALT_LEN + 4 + 1 + POINT_LEN;
/// AES-GCM tag length.
const TAG_LEN: usize = 16;
/// A push service must accept at least 4096 octets of body (RFC 8291 §4): what fits in
/// that, after the header, the padding delimiter and the tag.
pub const MAX_PLAINTEXT: usize = 4096 - HEADER_LEN - 1 - TAG_LEN;

/// Why a message could not be encrypted or decrypted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EceError {
    /// The browser's `p256dh` is not an uncompressed P-256 point.
    #[error("the subscription's p256dh key is not a P-256 public key")]
    BadPublicKey,
    /// The browser's `auth` secret is not 16 octets.
    #[error("the subscription's auth secret is not 16 bytes")]
    BadAuthSecret,
    /// The plaintext does not fit one 4096-octet message.
    #[error(
        "payload of {0} bytes is larger than the {MAX_PLAINTEXT} bytes a push message can carry"
    )]
    TooLarge(usize),
    /// The body is not a well-formed `aes128gcm` message.
    #[error("malformed aes128gcm body: {0}")]
    Malformed(&'static str),
    /// Authentication failed: wrong keys, or the body was altered.
    #[error("the body does not decrypt with this subscription's keys")]
    Undecryptable,
}

/// Content-encryption key and nonce for one message.
struct Keys {
    cek: [u8; 16],
    nonce: [u8; 12],
}

/// The RFC 8291 §3.4 key schedule: from the ECDH secret, the auth secret, both public
/// keys (uncompressed) and the salt to the content-encryption key and nonce.
fn derive(
    ecdh_secret: &[u8],
    auth_secret: &[u8],
    ua_public: &[u8],
    as_public: &[u8],
    salt: &[u8],
) -> Keys {
    // IKM = HKDF(salt = auth_secret, ikm = ecdh_secret, info = "WebPush: info" ‖ 0 ‖ ua ‖ as)
    let mut key_info = Vec::with_capacity(14 + 2 * POINT_LEN);
    key_info.extend_from_slice(b"WebPush: info\0");
    key_info.extend_from_slice(ua_public);
    key_info.extend_from_slice(as_public);
    let mut ikm = [0u8; 32];
    expand(
        &Hkdf::<Sha256>::new(Some(auth_secret), ecdh_secret),
        &key_info,
        &mut ikm,
    );
    // Then RFC 8188: PRK = HKDF-Extract(salt, IKM); CEK and NONCE from it.
    let prk = Hkdf::<Sha256>::new(Some(salt), &ikm);
    let mut keys = Keys {
        cek: [0; 16],
        nonce: [0; 12],
    };
    expand(&prk, b"Content-Encoding: aes128gcm\0", &mut keys.cek);
    expand(&prk, b"Content-Encoding: nonce\0", &mut keys.nonce);
    keys
}

/// HKDF-Expand into `out`; the lengths used here (12, 16, 32) are far below the
/// 255 × 32 octets HKDF-SHA-256 can produce, so this cannot fail.
fn expand(hkdf: &Hkdf<Sha256>, info: &[u8], out: &mut [u8]) {
    if hkdf.expand(info, out).is_err() {
        unreachable!("HKDF-SHA-256 output of {} bytes is always valid", out.len());
    }
}

/// The uncompressed SEC1 encoding of `key` (65 octets, leading 0x04).
pub fn public_key_bytes(key: &PublicKey) -> Vec<u8> {
    key.as_affine().to_sec1_point(false).as_bytes().to_vec()
}

/// Encrypts `plaintext` for a browser with public key `ua_public` (65 octets) and
/// authentication secret `auth_secret` (16 octets), with a fresh key pair and salt.
pub fn encrypt(
    plaintext: &[u8],
    ua_public: &[u8],
    auth_secret: &[u8],
) -> Result<Vec<u8>, EceError> {
    let ephemeral = SecretKey::generate();
    let salt: [u8; SALT_LEN] = rand::random();
    encrypt_with(plaintext, ua_public, auth_secret, &ephemeral, &salt)
}

/// [`encrypt`] with the application server's key pair and the salt given (tests use the
/// fixed values of RFC 8291 Appendix A).
pub fn encrypt_with(
    plaintext: &[u8],
    ua_public: &[u8],
    auth_secret: &[u8],
    as_secret: &SecretKey,
    salt: &[u8; SALT_LEN],
) -> Result<Vec<u8>, EceError> {
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(EceError::TooLarge(plaintext.len()));
    }
    if auth_secret.len() != 16 {
        return Err(EceError::BadAuthSecret);
    }
    // Only the uncompressed form is allowed (RFC 8291 §3.1).
    if ua_public.len() != POINT_LEN || ua_public[0] != 0x04 {
        return Err(EceError::BadPublicKey);
    }
    let ua_key = PublicKey::from_sec1_bytes(ua_public).map_err(|_| EceError::BadPublicKey)?;
    let as_public = public_key_bytes(&as_secret.public_key());
    let shared = as_secret.diffie_hellman(&ua_key);
    let keys = derive(
        shared.raw_secret_bytes(),
        auth_secret,
        ua_public,
        &as_public,
        salt,
    );

    // One record, so it is the last one: delimiter 0x02 and no further padding.
    let mut record = Vec::with_capacity(plaintext.len() + 1);
    record.extend_from_slice(plaintext);
    record.push(0x02);
    let sealed = cipher(&keys)
        .encrypt(
            &aead::Nonce::<Aes128Gcm>::from(keys.nonce),
            record.as_slice(),
        )
        .map_err(|_| EceError::TooLarge(plaintext.len()))?;

    let mut body = Vec::with_capacity(HEADER_LEN + sealed.len());
    body.extend_from_slice(salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(POINT_LEN as u8);
    body.extend_from_slice(&as_public);
    body.extend_from_slice(&sealed);
    Ok(body)
}

/// The AES-128-GCM cipher under the message's content-encryption key.
fn cipher(keys: &Keys) -> Aes128Gcm {
    // A 16-byte array is always a valid AES-128 key.
    match Aes128Gcm::new_from_slice(&keys.cek) {
        Ok(cipher) => cipher,
        Err(_) => unreachable!("16-byte AES-128 key"),
    }
}

/// Decrypts an `aes128gcm` body as the browser does, with its private key `ua_secret` and
/// its authentication secret. Accepts several records and any padding.
pub fn decrypt(
    body: &[u8],
    ua_secret: &SecretKey,
    auth_secret: &[u8],
) -> Result<Vec<u8>, EceError> {
    if auth_secret.len() != 16 {
        return Err(EceError::BadAuthSecret);
    }
    if body.len() < SALT_LEN + 5 {
        return Err(EceError::Malformed("shorter than its header"));
    }
    let salt = &body[..SALT_LEN];
    let rs = u32::from_be_bytes([body[16], body[17], body[18], body[19]]) as usize;
    let id_len = body[20] as usize;
    // A record holds at least the delimiter and the tag (RFC 8188 §2.1).
    if rs < TAG_LEN + 2 {
        return Err(EceError::Malformed("record size too small"));
    }
    if id_len != POINT_LEN || body.len() < 21 + id_len {
        return Err(EceError::Malformed("keyid is not a 65-byte public key"));
    }
    let as_public = &body[21..21 + id_len];
    let as_key = PublicKey::from_sec1_bytes(as_public)
        .map_err(|_| EceError::Malformed("keyid is not a P-256 point"))?;
    let ua_public = public_key_bytes(&ua_secret.public_key());
    let shared = ua_secret.diffie_hellman(&as_key);
    let keys = derive(
        shared.raw_secret_bytes(),
        auth_secret,
        &ua_public,
        as_public,
        salt,
    );
    let cipher = cipher(&keys);

    let records = &body[21 + id_len..];
    if records.is_empty() {
        return Err(EceError::Malformed("no record"));
    }
    let mut plaintext = Vec::with_capacity(records.len());
    let chunks: Vec<&[u8]> = records.chunks(rs).collect();
    for (seq, chunk) in chunks.iter().enumerate() {
        // The nonce of record `seq` is NONCE xor seq (big-endian, in the last 6 octets
        // in practice).
        let mut nonce = keys.nonce;
        for (i, byte) in (seq as u64).to_be_bytes().iter().enumerate() {
            nonce[4 + i] ^= byte;
        }
        let mut record = cipher
            .decrypt(&aead::Nonce::<Aes128Gcm>::from(nonce), *chunk)
            .map_err(|_| EceError::Undecryptable)?;
        // Strip the padding: trailing zeros, then the delimiter (2 = last, 1 = more).
        while record.last() == Some(&0) {
            record.pop();
        }
        let last = seq + 1 == chunks.len();
        match (record.pop(), last) {
            (Some(2), true) | (Some(1), false) => {}
            (Some(1), true) => {
                return Err(EceError::Malformed("the last record is not marked last"));
            }
            (Some(2), false) => return Err(EceError::Malformed("a record after the last one")),
            _ => return Err(EceError::Malformed("no padding delimiter")),
        }
        plaintext.extend_from_slice(&record);
    }
    Ok(plaintext)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn b64(s: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(s).unwrap_or_default()
    }

    // RFC 8291 Appendix A.
    const PLAINTEXT: &str = "When I grow up, I want to be a watermelon";
    const AS_PRIVATE: &str = "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw";
    const AS_PUBLIC: &str =
        "BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8";
    const UA_PRIVATE: &str = "q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94";
    const UA_PUBLIC: &str =
        "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
    const SALT: &str = "DGv6ra1nlYgDCS1FRnbzlw";
    const AUTH: &str = "BTBZMqHH6r4Tts7J_aSIgg";
    const BODY: &str = "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN";

    #[test]
    fn the_rfc_8291_key_schedule_gives_the_appendix_a_cek_and_nonce()
    -> Result<(), Box<dyn std::error::Error>> {
        let as_secret = SecretKey::from_slice(&b64(AS_PRIVATE))?;
        let ua_key = PublicKey::from_sec1_bytes(&b64(UA_PUBLIC))?;
        let shared = as_secret.diffie_hellman(&ua_key);
        assert_eq!(
            shared.raw_secret_bytes().as_slice(),
            b64("kyrL1jIIOHEzg3sM2ZWRHDRB62YACZhhSlknJ672kSs")
        );
        let keys = derive(
            shared.raw_secret_bytes(),
            &b64(AUTH),
            &b64(UA_PUBLIC),
            &b64(AS_PUBLIC),
            &b64(SALT),
        );
        assert_eq!(keys.cek.to_vec(), b64("oIhVW04MRdy2XN9CiKLxTg"));
        assert_eq!(keys.nonce.to_vec(), b64("4h_95klXJ5E_qnoN"));
        Ok(())
    }

    #[test]
    fn encryption_with_the_rfc_8291_keys_gives_the_appendix_a_body()
    -> Result<(), Box<dyn std::error::Error>> {
        let as_secret = SecretKey::from_slice(&b64(AS_PRIVATE))?;
        assert_eq!(public_key_bytes(&as_secret.public_key()), b64(AS_PUBLIC));
        let salt: [u8; 16] = b64(SALT).try_into().map_err(|_| "a 16-byte salt")?;
        let body = encrypt_with(
            PLAINTEXT.as_bytes(),
            &b64(UA_PUBLIC),
            &b64(AUTH),
            &as_secret,
            &salt,
        )?;
        assert_eq!(URL_SAFE_NO_PAD.encode(&body), BODY);
        Ok(())
    }

    #[test]
    fn the_rfc_8291_body_decrypts_with_the_user_agent_keys()
    -> Result<(), Box<dyn std::error::Error>> {
        let ua_secret = SecretKey::from_slice(&b64(UA_PRIVATE))?;
        let plaintext = decrypt(&b64(BODY), &ua_secret, &b64(AUTH))?;
        assert_eq!(plaintext, PLAINTEXT.as_bytes());
        Ok(())
    }

    #[test]
    fn what_is_encrypted_decrypts_to_the_same_bytes_with_fresh_keys_each_time()
    -> Result<(), Box<dyn std::error::Error>> {
        let ua_secret = SecretKey::generate();
        let ua_public = public_key_bytes(&ua_secret.public_key());
        let auth: [u8; 16] = rand::random();
        let message = br#"{"title":"Ready","body":"Your order is ready","data":{}}"#;
        let first = encrypt(message, &ua_public, &auth)?;
        let second = encrypt(message, &ua_public, &auth)?;
        // A fresh salt and key pair per message.
        assert_ne!(first[..86], second[..86]);
        assert_eq!(decrypt(&first, &ua_secret, &auth)?, message);
        assert_eq!(decrypt(&second, &ua_secret, &auth)?, message);
        Ok(())
    }

    #[test]
    fn a_wrong_auth_secret_or_an_altered_body_does_not_decrypt()
    -> Result<(), Box<dyn std::error::Error>> {
        let ua_secret = SecretKey::generate();
        let ua_public = public_key_bytes(&ua_secret.public_key());
        let auth: [u8; 16] = rand::random();
        let mut body = encrypt(b"hello", &ua_public, &auth)?;
        assert_eq!(
            decrypt(&body, &ua_secret, &[0u8; 16]),
            Err(EceError::Undecryptable)
        );
        let last = body.len() - 1;
        body[last] ^= 1;
        assert_eq!(
            decrypt(&body, &ua_secret, &auth),
            Err(EceError::Undecryptable)
        );
        Ok(())
    }

    #[test]
    fn payloads_too_large_or_bad_keys_are_refused() -> Result<(), Box<dyn std::error::Error>> {
        let ua_secret = SecretKey::generate();
        let ua_public = public_key_bytes(&ua_secret.public_key());
        let auth = [7u8; 16];
        let big = vec![b'x'; MAX_PLAINTEXT + 1];
        assert_eq!(
            encrypt(&big, &ua_public, &auth),
            Err(EceError::TooLarge(MAX_PLAINTEXT + 1))
        );
        let fits = vec![b'x'; MAX_PLAINTEXT];
        assert_eq!(encrypt(&fits, &ua_public, &auth)?.len(), 4096);
        assert_eq!(
            encrypt(b"x", &ua_public[..33], &auth),
            Err(EceError::BadPublicKey)
        );
        assert_eq!(
            encrypt(b"x", &ua_public, &auth[..8]),
            Err(EceError::BadAuthSecret)
        );
        Ok(())
    }
}
