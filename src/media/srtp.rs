//! A subscriber's SRTP context of conclave's own, for the forward path.
//!
//! rtc derives a peer connection's SRTP contexts when its DTLS handshake
//! completes and keeps them private, so every forwarded packet used to take
//! rtc's whole write pipeline (interceptors, marshalling, encryption, the
//! ICE handler, a queue) to reach the wire: four allocations and most of
//! the CPU a forwarded packet cost. Audio needs none of that pipeline: Opus
//! is negotiated without NACK or RTX, and its sender reports are cheap to
//! write from counters (see `forwarder.rs`). What it needs is the key.
//!
//! rtc lets the application supply the crypto provider a peer connection
//! uses for everything (`SettingEngineBuilder::with_crypto_provider`), and
//! the SRTP key derivation of RFC 3711 §4.3 is fixed by the standard: the
//! first block a context encrypts under its master key is the master salt
//! XOR the label 0x00 with index 0, which is the salt followed by zeros. So
//! [`KeyTap`] wraps rtc's ring provider, hands every call through, and notes
//! the master key and salt of each SRTP context built with it. rtc builds the
//! local (sending) context before the remote one (`DtlsHandler::
//! update_srtp_contexts`); the forwarder checks that against the first
//! SRTCP packet of the peer's that authenticates under either key (see
//! [`Keys::verify`]), and falls back to rtc's pipeline if it was wrong.
//!
//! Only two profiles are offered, so the cipher rtc builds next tells which
//! one was negotiated: an AEAD is AES-128-GCM, a stream cipher is
//! AES-128-CM with HMAC-SHA1-80. Both are in every browser. The 32-bit tag
//! is left out because its cipher would look the same as the 80-bit one's
//! from here; the 256-bit keys because nothing needs them.
//!
//! The contexts are separate but share keys with rtc's, which is safe as long
//! as no SSRC is encrypted by both under one key: a track takes one path at
//! its first packet and keeps it (`Outgoing::direct`), unless the check
//! proves the keys were the other way round, and then what it sent was
//! under the peer's key, not rtc's.

use std::sync::{Arc, Mutex};

use rtc::crypto::{
    AeadAlgorithm, AeadCipher, BlockCipherAlgorithm, CbcAlgorithm, CbcCipher, CryptoAlgorithm,
    CryptoError, HashAlgorithm, HmacAlgorithm, KeyExchangeAlgorithm, Mac, PublicKey, RTCCrypto,
    RTCCryptoProvider, RTCRandom, SignatureScheme, SigningKey, StreamCipher, StreamCipherAlgorithm,
};
use rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc::srtp::context::Context;
use rtc::srtp::protection_profile::ProtectionProfile;

/// The SRTP profiles a server peer connection offers (see the module notes).
pub(crate) fn offered_profiles() -> Vec<SrtpProtectionProfile> {
    vec![
        SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
        SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
    ]
}

/// One SRTP context's master key and salt, as rtc derived it.
#[derive(Clone)]
pub(crate) struct Keys {
    pub profile: ProtectionProfile,
    pub key: Vec<u8>,
    pub salt: Vec<u8>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key material itself, even at trace level.
        f.debug_struct("Keys")
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

impl Keys {
    /// A context of conclave's own with these keys.
    pub(crate) fn context(&self, crypto: &dyn RTCCrypto) -> Option<Context> {
        Context::new(&self.key, &self.salt, self.profile, None, None, crypto).ok()
    }

    /// Whether an SRTCP packet the peer sent authenticates under these keys:
    /// proof that they are the peer's sending side, and so that the other
    /// context noted is ours.
    pub(crate) fn verify(&self, crypto: &dyn RTCCrypto, srtcp: &[u8]) -> bool {
        self.context(crypto)
            .is_some_and(|mut c| c.decrypt_rtcp(srtcp).is_ok())
    }
}

#[derive(Default)]
struct Seen {
    /// Master keys already noted, so that a context's later derivations
    /// (its other labels, under the same key) start nothing.
    keys: Vec<Vec<u8>>,
    /// The first block under a new master key, until its cipher is built.
    pending: Option<(Vec<u8>, [u8; 16])>,
    /// The contexts built, in order.
    contexts: Vec<Keys>,
}

/// A crypto provider that notes the SRTP keys derived through it.
pub(crate) struct KeyTap {
    inner: Arc<dyn RTCCryptoProvider>,
    seen: Mutex<Seen>,
}

impl KeyTap {
    /// `None` only if rtc was built without a crypto provider.
    pub(crate) fn new() -> Option<Arc<KeyTap>> {
        let inner = rtc::crypto::default_provider().ok()?;
        Some(Arc::new(KeyTap {
            inner,
            seen: Mutex::new(Seen::default()),
        }))
    }

    /// The provider's own crypto, for contexts conclave builds itself.
    pub(crate) fn plain(&self) -> &dyn RTCCrypto {
        self.inner.crypto()
    }

    /// The local and remote contexts' keys, once rtc has built both.
    pub(crate) fn keys(&self) -> Option<(Keys, Keys)> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        match seen.contexts.as_slice() {
            [local, remote, ..] => Some((local.clone(), remote.clone())),
            _ => None,
        }
    }

    fn note_block(&self, algorithm: BlockCipherAlgorithm, key: &[u8], block: &[u8]) {
        if algorithm != BlockCipherAlgorithm::Aes128 || block.len() != 16 {
            return;
        }
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.keys.iter().any(|k| k == key) {
            return;
        }
        seen.keys.push(key.to_vec());
        let mut first = [0u8; 16];
        first.copy_from_slice(block);
        seen.pending = Some((key.to_vec(), first));
    }

    fn note_cipher(&self, profile: ProtectionProfile) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let Some((key, block)) = seen.pending.take() else {
            return;
        };
        let salt = block[..profile.salt_len()].to_vec();
        seen.contexts.push(Keys { profile, key, salt });
    }
}

impl RTCCryptoProvider for KeyTap {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn crypto(&self) -> &dyn RTCCrypto {
        self
    }

    fn random(&self) -> &dyn RTCRandom {
        self.inner.random()
    }
}

impl RTCCrypto for KeyTap {
    fn supports(&self, algorithm: CryptoAlgorithm) -> bool {
        self.inner.crypto().supports(algorithm)
    }

    fn hash(&self, algorithm: HashAlgorithm, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.inner.crypto().hash(algorithm, data)
    }

    fn block_encrypt(
        &self,
        algorithm: BlockCipherAlgorithm,
        key: &[u8],
        block: &mut [u8],
    ) -> Result<(), CryptoError> {
        self.note_block(algorithm, key, block);
        self.inner.crypto().block_encrypt(algorithm, key, block)
    }

    fn new_hmac(&self, algorithm: HmacAlgorithm, key: &[u8]) -> Result<Box<dyn Mac>, CryptoError> {
        self.inner.crypto().new_hmac(algorithm, key)
    }

    fn new_stream_cipher(
        &self,
        algorithm: StreamCipherAlgorithm,
        key: &[u8],
    ) -> Result<Box<dyn StreamCipher>, CryptoError> {
        if algorithm == StreamCipherAlgorithm::Aes128Ctr {
            self.note_cipher(ProtectionProfile::Aes128CmHmacSha1_80);
        }
        self.inner.crypto().new_stream_cipher(algorithm, key)
    }

    fn new_aead(
        &self,
        algorithm: AeadAlgorithm,
        key: &[u8],
    ) -> Result<Box<dyn AeadCipher>, CryptoError> {
        // DTLS builds AEADs for its records too, but never right after an
        // AES block under a key not seen before: nothing is pending then.
        if algorithm == AeadAlgorithm::Aes128Gcm {
            self.note_cipher(ProtectionProfile::AeadAes128Gcm);
        }
        self.inner.crypto().new_aead(algorithm, key)
    }

    fn new_cbc(
        &self,
        algorithm: CbcAlgorithm,
        key: &[u8],
    ) -> Result<Box<dyn CbcCipher>, CryptoError> {
        self.inner.crypto().new_cbc(algorithm, key)
    }

    fn start_key_exchange(
        &self,
        algorithm: KeyExchangeAlgorithm,
    ) -> Result<Box<dyn rtc::crypto::ActiveKeyExchange>, CryptoError> {
        self.inner.crypto().start_key_exchange(algorithm)
    }

    fn generate_signing_key(
        &self,
        scheme: SignatureScheme,
    ) -> Result<Arc<dyn SigningKey>, CryptoError> {
        self.inner.crypto().generate_signing_key(scheme)
    }

    fn import_signing_key(
        &self,
        scheme: SignatureScheme,
        pkcs8_der: &[u8],
    ) -> Result<Arc<dyn SigningKey>, CryptoError> {
        self.inner.crypto().import_signing_key(scheme, pkcs8_der)
    }

    fn verify_signature(
        &self,
        scheme: SignatureScheme,
        public_key: PublicKey<'_>,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), CryptoError> {
        self.inner
            .crypto()
            .verify_signature(scheme, public_key, message, signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both profiles: the keys noted while rtc-srtp builds a context are the
    /// ones it was given, and a context built from them encrypts exactly as
    /// the original does (the receiver could not tell them apart).
    #[test]
    fn the_keys_noted_build_a_context_that_encrypts_like_the_original() {
        for profile in [
            ProtectionProfile::AeadAes128Gcm,
            ProtectionProfile::Aes128CmHmacSha1_80,
        ] {
            let tap = KeyTap::new().expect("a provider");
            let key: Vec<u8> = (1..=profile.key_len() as u8).collect();
            let salt: Vec<u8> = (100..100 + profile.salt_len() as u8).collect();
            let remote_key: Vec<u8> = key.iter().map(|b| b ^ 0x55).collect();
            let mut original = Context::new(&key, &salt, profile, None, None, &*tap).expect("ctx");
            Context::new(&remote_key, &salt, profile, None, None, &*tap).expect("ctx");
            let (local, remote) = tap.keys().expect("both noted");
            assert_eq!(local.profile as u8, profile as u8);
            assert_eq!((&local.key, &local.salt), (&key, &salt));
            assert_eq!(remote.key, remote_key);

            let mut ours = local.context(tap.plain()).expect("ctx");
            let packet = rtc::rtp::Packet {
                header: rtc::rtp::header::Header {
                    version: 2,
                    payload_type: 111,
                    sequence_number: 7,
                    timestamp: 960,
                    ssrc: 42,
                    ..Default::default()
                },
                payload: bytes::Bytes::from_static(b"opus frame"),
            };
            use rtc::shared::marshal::Marshal;
            let plain = packet.marshal().expect("marshal");
            let a = original.encrypt_rtp(&plain).expect("encrypt");
            let b = ours.encrypt_rtp(&plain).expect("encrypt");
            assert_eq!(a, b, "{profile:?}");
        }
    }

    #[test]
    fn a_dtls_record_cipher_is_not_taken_for_an_srtp_context() {
        let tap = KeyTap::new().expect("a provider");
        tap.new_aead(AeadAlgorithm::Aes128Gcm, &[9; 16])
            .expect("aead");
        assert!(tap.keys().is_none());
    }
}
