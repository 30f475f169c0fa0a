//! Group CA, node keys and node certificates.
//!
//! The group CA key is a function of the group key alone, so every host that
//! holds the key file computes the same CA and can sign its own node
//! certificate; no CA file is ever copied between hosts. The node key is
//! generated once per state directory and never leaves it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use aws_lc_rs::encoding::AsDer;
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber,
};

use super::NetError;
use super::files::{self, Replace};
use crate::config::canonical_host;
use crate::trusted::Kind;

/// BLAKE3 `derive_key` context for the group CA's private key. Changing it
/// changes every group's CA, so every node certificate: never edit it; make
/// a new version instead.
pub const CA_KEY_CONTEXT: &str = "snapsync 2026-05-01 group CA P-256 signing key v1";

/// How many candidates the CA key derivation tries before giving up. A
/// candidate is out of range with probability below 2^-32, so the first one
/// is used in practice; the bound only keeps the loop finite.
const CA_KEY_TRIES: u32 = 16;

/// The order n of the P-256 group, big-endian (SEC 2, §2.4.2). A private
/// key must lie in [1, n-1].
const P256_ORDER: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xbc, 0xe6, 0xfa,
    0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

/// The node's private key file in `state_dir/net`.
pub const NODE_KEY_FILE: &str = "node-key.pem";

/// Longest host name accepted (DNS limit, RFC 1035 §2.3.4).
const MAX_HOST_LEN: usize = 253;

/// The SHA-256 digest of a node certificate's SubjectPublicKeyInfo (DER).
///
/// Pins record this rather than a digest of the whole certificate: a node
/// re-issues its certificate whenever the group key or its host name
/// changes, and that must not look like an impostor; a new node *key* must.
/// An operator can compute it with
/// `openssl x509 -in CERT -noout -pubkey | openssl pkey -pubin -outform DER | sha256sum`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// Prefix of the text form, naming the digest.
    const PREFIX: &'static str = "sha256:";

    /// The fingerprint of a DER-encoded SubjectPublicKeyInfo.
    pub fn of_public_key(spki_der: &[u8]) -> Fingerprint {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, spki_der);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Fingerprint(out)
    }

    /// A fingerprint from its raw digest.
    pub fn from_bytes(bytes: [u8; 32]) -> Fingerprint {
        Fingerprint(bytes)
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Self::PREFIX)?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Fingerprint {
    type Err = String;

    fn from_str(s: &str) -> Result<Fingerprint, String> {
        let hex =
            s.strip_prefix(Self::PREFIX).ok_or_else(|| format!("expected `{}` and 64 hex digits", Self::PREFIX))?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("expected 64 hex digits after `{}`", Self::PREFIX));
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
        }
        Ok(Fingerprint(out))
    }
}

/// Checks that `host` can be a node certificate's name: 1 to 253 ASCII
/// letters, digits, `-`, `.` or `_`. Names are compared in their canonical
/// form ([`canonical_host`]): certificates this node issues carry it, and
/// a peer certificate's name is made canonical as it is read.
pub fn check_host(host: &str) -> Result<(), NetError> {
    let bad = |why| Err(NetError::HostName { host: host.to_owned(), why });
    if host.is_empty() {
        return bad("empty");
    }
    if host.len() > MAX_HOST_LEN {
        return bad("longer than 253 characters");
    }
    if !host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')) {
        return bad("only ASCII letters, digits, '-', '.' and '_' may appear");
    }
    Ok(())
}

/// Validity of every certificate snapsync makes. Membership is decided by
/// the group key and the pins, not by dates: a cluster whose clocks drift,
/// or that nobody touches for years, must keep working. RFC 5280 §4.1.2.5
/// allows a certificate with no meaningful expiry.
fn validity(params: &mut CertificateParams) {
    params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    params.not_after = rcgen::date_time_ymd(9999, 12, 31);
}

/// The group certificate authority: a P-256 key derived from the group key,
/// and a self-signed CA certificate for it.
///
/// Every holder of the group key derives the same key, so the same public
/// key, subject and extensions; only the signature bytes of the CA
/// certificate differ between hosts (ECDSA signatures are randomised), which
/// no verifier looks at for a trust anchor.
pub struct GroupCa {
    key: KeyPair,
    params: CertificateParams,
    cert_pem: String,
    cert_der: Vec<u8>,
    fingerprint: Fingerprint,
}

impl GroupCa {
    /// Derives the group CA from the group key's bytes (as
    /// [`crate::key::read`] returns them).
    ///
    /// The private key is `blake3::derive_key(CA_KEY_CONTEXT, counter ‖ group_key)`,
    /// `counter` a little-endian u32 starting at 0, read as a big-endian
    /// P-256 scalar; a candidate that is 0 or not below the group order is
    /// skipped by incrementing the counter.
    pub fn derive(group_key: &[u8]) -> Result<GroupCa, NetError> {
        if group_key.is_empty() {
            return Err(NetError::GroupKey { why: "it is empty".into() });
        }
        let scalar = derive_ca_scalar(group_key)?;
        let private = aws_lc_rs::agreement::PrivateKey::from_private_key(&aws_lc_rs::agreement::ECDH_P256, &scalar)
            .map_err(|e| NetError::crypto("load the group CA key", e))?;
        let pkcs8: aws_lc_rs::encoding::Pkcs8V1Der<'_> =
            private.as_der().map_err(|e| NetError::crypto("encode the group CA key", e))?;
        let key = KeyPair::try_from(pkcs8.as_ref()).map_err(|e| NetError::crypto("load the group CA key", e))?;
        let spki = key.subject_public_key_info();
        let fingerprint = Fingerprint::of_public_key(&spki);

        let mut params = CertificateParams::default();
        validity(&mut params);
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "snapsync");
        dn.push(DnType::CommonName, format!("snapsync group CA {}", short_id(&fingerprint)));
        params.distinguished_name = dn;
        // Node certificates are signed directly by the CA: no intermediates.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        // Deterministic, so every host's copy of the CA certificate carries
        // the same serial.
        params.serial_number = Some(SerialNumber::from_slice(&positive_serial(&fingerprint.as_bytes()[..16])));
        let cert = params.self_signed(&key).map_err(|e| NetError::crypto("make the group CA certificate", e))?;
        Ok(GroupCa { cert_pem: cert.pem(), cert_der: cert.der().to_vec(), key, params, fingerprint })
    }

    /// The CA certificate, PEM.
    pub fn certificate_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn certificate_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// Fingerprint of the CA public key: identifies the group key without
    /// revealing it.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// A short name of this CA for file names: 16 hex digits of its fingerprint.
    pub fn id(&self) -> String {
        short_id(&self.fingerprint)
    }

    /// Signs a node certificate for `host`, as given, and the public key of
    /// `node_key`. Callers pass the canonical name.
    pub(crate) fn issue(&self, host: &str, node_key: &KeyPair) -> Result<rcgen::Certificate, NetError> {
        check_host(host)?;
        let name =
            Ia5String::try_from(host).map_err(|_| NetError::HostName { host: host.to_owned(), why: "not ASCII" })?;
        let mut params = CertificateParams::default();
        validity(&mut params);
        params.subject_alt_names = vec![SanType::DnsName(name)];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "snapsync");
        dn.push(DnType::CommonName, host);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // The same certificate serves a node as QUIC server and as client.
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let mut serial = [0u8; 16];
        getrandom::fill(&mut serial).map_err(|e| NetError::crypto("get random bytes", e))?;
        params.serial_number = Some(SerialNumber::from_slice(&positive_serial(&serial)));
        let issuer = Issuer::from_params(&self.params, &self.key);
        params.signed_by(node_key, &issuer).map_err(|e| NetError::crypto("sign the node certificate", e))
    }

    /// The CA public key as x509-parser reads it, for checking signatures.
    fn verify(&self, cert: &x509_parser::certificate::X509Certificate<'_>) -> bool {
        let Ok((_, ca)) = x509_parser::parse_x509_certificate(&self.cert_der) else { return false };
        cert.verify_signature(Some(ca.public_key())).is_ok()
    }
}

/// The candidate scalars of the CA key, in order, until one is in range.
fn derive_ca_scalar(group_key: &[u8]) -> Result<[u8; 32], NetError> {
    for counter in 0..CA_KEY_TRIES {
        let mut hasher = blake3::Hasher::new_derive_key(CA_KEY_CONTEXT);
        hasher.update(&counter.to_le_bytes());
        hasher.update(group_key);
        let candidate: [u8; 32] = *hasher.finalize().as_bytes();
        if is_p256_scalar(&candidate) {
            return Ok(candidate);
        }
    }
    Err(NetError::GroupKey { why: "no valid CA key could be derived from it".into() })
}

/// Whether `s`, big-endian, is in [1, n-1] for the P-256 order n.
fn is_p256_scalar(s: &[u8; 32]) -> bool {
    s.iter().any(|&b| b != 0) && s < &P256_ORDER
}

/// A serial number that DER encodes as a positive integer of the same length.
fn positive_serial(bytes: &[u8]) -> Vec<u8> {
    let mut v = bytes.to_vec();
    if let Some(first) = v.first_mut() {
        // Below 0x80 so it reads as positive, above 0 so DER keeps every byte.
        *first = (*first & 0x7f).max(1);
    }
    v
}

fn short_id(fp: &Fingerprint) -> String {
    fp.to_string()[Fingerprint::PREFIX.len()..][..16].to_owned()
}

/// A node's identity in one group: its host name, its private key, and its
/// certificate signed by the group CA.
///
/// Files, under `state_dir/net/` (mode 0700):
/// - `node-key.pem`: the node's P-256 private key, PKCS#8, mode 0600. Made
///   once; shared by every group the node is in, so a peer's pin holds
///   across groups.
/// - `node-cert-ID.pem`: the node certificate under the group CA with id
///   `ID` ([`GroupCa::id`]), mode 0600. Re-issued when it no longer matches
///   (another host name, another key, damaged).
pub struct NodeIdentity {
    host: String,
    ca: GroupCa,
    key_pem: String,
    cert_pem: String,
    fingerprint: Fingerprint,
    key_path: PathBuf,
    cert_path: PathBuf,
}

impl NodeIdentity {
    /// Loads this node's identity for the group whose key is `group_key`,
    /// creating the node key and certificate on first use. The certificate
    /// names `host` in canonical form; one stored with another spelling is
    /// issued again.
    pub fn load_or_create(state_dir: &Path, host: &str, group_key: &[u8]) -> Result<NodeIdentity, NetError> {
        check_host(host)?;
        let host = &canonical_host(host);
        let ca = GroupCa::derive(group_key)?;
        let dir = files::net_dir(state_dir)?;
        let key_path = dir.join(NODE_KEY_FILE);
        let key = load_or_create_key(&key_path)?;
        let key_pem = key.serialize_pem();
        let spki = key.subject_public_key_info();
        let fingerprint = Fingerprint::of_public_key(&spki);

        let cert_path = dir.join(format!("node-cert-{}.pem", ca.id()));
        // The certificate is public; one that is missing, damaged, or no
        // longer fits is simply issued again.
        let stored = files::read_optional(&cert_path)?
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .filter(|pem| stored_cert_fits(pem.as_bytes(), host, &spki, &ca));
        let cert_pem = match stored {
            Some(pem) => pem,
            None => {
                let pem = ca.issue(host, &key)?.pem();
                files::write_private(&cert_path, pem.as_bytes(), Replace::Always)?;
                pem
            }
        };
        Ok(NodeIdentity { host: host.to_owned(), ca, key_pem, cert_pem, fingerprint, key_path, cert_path })
    }

    /// The host name in this node's certificate.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The fingerprint peers pin for this node.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The group CA this identity belongs to.
    pub fn group_ca(&self) -> &GroupCa {
        &self.ca
    }

    /// The node certificate, PEM.
    pub fn certificate_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Where the node key is kept.
    pub fn key_path(&self) -> &Path {
        &self.key_path
    }

    /// Where the node certificate is kept.
    pub fn certificate_path(&self) -> &Path {
        &self.cert_path
    }

    pub(crate) fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// An identity whose certificate names `raw_host` exactly as given, as
    /// a peer that does not make its name canonical would present it.
    #[cfg(test)]
    pub(crate) fn with_raw_name(state_dir: &Path, raw_host: &str, group_key: &[u8]) -> NodeIdentity {
        let mut id = NodeIdentity::load_or_create(state_dir, raw_host, group_key).unwrap();
        let key = KeyPair::from_pem(&id.key_pem).unwrap();
        id.cert_pem = id.ca.issue(raw_host, &key).unwrap().pem();
        id.host = raw_host.to_owned();
        id
    }

    /// An identity that trusts the CA of `trusted_key` but presents a
    /// certificate signed by the CA of `signing_key`: a host of another
    /// group that somehow knows this group's CA certificate.
    #[cfg(test)]
    pub(crate) fn forged(state_dir: &Path, host: &str, trusted_key: &[u8], signing_key: &[u8]) -> NodeIdentity {
        let mut id = NodeIdentity::load_or_create(state_dir, host, signing_key).unwrap();
        id.ca = GroupCa::derive(trusted_key).unwrap();
        id
    }
}

impl fmt::Debug for NodeIdentity {
    // Never prints the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("host", &self.host)
            .field("fingerprint", &self.fingerprint)
            .field("group_ca", &self.ca.fingerprint)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

/// Reads the node key, or makes one if there is none. When two processes
/// race to make it, the second one's link fails and it reads the first's.
fn load_or_create_key(path: &Path) -> Result<KeyPair, NetError> {
    if let Some(bytes) = files::read_private(path, Kind::NodeKey)? {
        return parse_key(path, &bytes);
    }
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| NetError::crypto("make a node key", e))?;
    match files::write_private(path, key.serialize_pem().as_bytes(), Replace::Never) {
        Ok(()) => Ok(key),
        Err(NetError::Io { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists => {
            let bytes = files::read_private(path, Kind::NodeKey)?.unwrap_or_default();
            parse_key(path, &bytes)
        }
        Err(e) => Err(e),
    }
}

fn parse_key(path: &Path, bytes: &[u8]) -> Result<KeyPair, NetError> {
    let bad = |why: String| NetError::KeyFile { path: path.to_path_buf(), why };
    let text = std::str::from_utf8(bytes).map_err(|_| bad("not a PEM file".into()))?;
    let key = KeyPair::from_pem(text).map_err(|e| bad(format!("not a private key: {e}")))?;
    if key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
        return Err(bad("not a P-256 ECDSA key".into()));
    }
    Ok(key)
}

/// Whether a stored certificate is still this node's for this group: for
/// `host` only (spelled exactly so), for this key, signed by this CA.
fn stored_cert_fits(pem_bytes: &[u8], host: &str, spki: &[u8], ca: &GroupCa) -> bool {
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(pem_bytes) else { return false };
    let Ok(cert) = pem.parse_x509() else { return false };
    matches!(cert_host(&cert), Ok(h) if h == host)
        && cert.public_key().raw == spki
        && ca.verify(&cert)
        && cert.validity().is_valid()
}

/// What a verified peer certificate says: the peer's host and key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerCertificate {
    /// The host name the certificate is for.
    pub host: String,
    /// The fingerprint of its public key.
    pub fingerprint: Fingerprint,
}

impl PeerCertificate {
    /// Reads a peer's node certificate (DER) whose chain TLS has already
    /// verified against the group CA. The host name is made canonical here,
    /// where it enters the program: a certificate for `APP1` is the
    /// certificate of `app1`, pinned and checked as `app1`.
    pub fn from_der(der: &[u8]) -> Result<PeerCertificate, String> {
        let (rest, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
        if !rest.is_empty() {
            return Err("trailing bytes after the certificate".into());
        }
        let host = canonical_host(&cert_host(&cert)?);
        Ok(PeerCertificate { host, fingerprint: Fingerprint::of_public_key(cert.public_key().raw) })
    }
}

/// The one DNS name of a node certificate, checked like a host name, as
/// written in the certificate.
fn cert_host(cert: &x509_parser::certificate::X509Certificate<'_>) -> Result<String, String> {
    use x509_parser::extensions::GeneralName;
    let san = cert.subject_alternative_name().map_err(|e| e.to_string())?.ok_or("no subject alternative name")?;
    let names: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(*d),
            _ => None,
        })
        .collect();
    match names.as_slice() {
        [one] => {
            check_host(one).map_err(|e| e.to_string())?;
            Ok((*one).to_owned())
        }
        [] => Err("no host name in the certificate".into()),
        _ => Err("more than one host name in the certificate".into()),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const KEY: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ._";

    #[test]
    fn the_group_ca_is_a_function_of_the_group_key() {
        let a = GroupCa::derive(KEY).unwrap();
        let b = GroupCa::derive(KEY).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.id(), b.id());
        let other = GroupCa::derive(b"another key").unwrap();
        assert_ne!(a.fingerprint(), other.fingerprint());
        // A fixed value guards the derivation itself: a change of context,
        // counter layout or encoding would split existing clusters.
        assert_eq!(GroupCa::derive(b"snapsync test vector").unwrap().fingerprint().to_string(), GROUP_CA_TEST_VECTOR);
    }

    /// Fingerprint of the CA for the key `snapsync test vector`.
    const GROUP_CA_TEST_VECTOR: &str = "sha256:48055f42060acae97268495c07d0391ace6d3586b94daa8ab187a674abda9f66";

    #[test]
    fn out_of_range_scalars_are_skipped() {
        assert!(!is_p256_scalar(&[0; 32]));
        assert!(!is_p256_scalar(&P256_ORDER));
        assert!(!is_p256_scalar(&[0xff; 32]));
        let mut below = P256_ORDER;
        below[31] -= 1;
        assert!(is_p256_scalar(&below));
        assert!(is_p256_scalar(&{
            let mut one = [0; 32];
            one[31] = 1;
            one
        }));
    }

    #[test]
    fn an_empty_group_key_is_refused() {
        assert!(matches!(GroupCa::derive(b""), Err(NetError::GroupKey { .. })));
    }

    #[test]
    fn node_key_is_made_once_private_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = NodeIdentity::load_or_create(dir.path(), "app0.example.com", KEY).unwrap();
        let mode = std::fs::metadata(first.key_path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let cert_mode = std::fs::metadata(first.certificate_path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(cert_mode, 0o600);
        let cert_before = std::fs::read(first.certificate_path()).unwrap();

        let again = NodeIdentity::load_or_create(dir.path(), "app0.example.com", KEY).unwrap();
        assert_eq!(again.fingerprint(), first.fingerprint());
        assert_eq!(std::fs::read(again.certificate_path()).unwrap(), cert_before, "a fitting certificate is kept");

        // Another group: same node key (so the same pin), another certificate.
        let other = NodeIdentity::load_or_create(dir.path(), "app0.example.com", b"other group key").unwrap();
        assert_eq!(other.fingerprint(), first.fingerprint());
        assert_ne!(other.certificate_path(), first.certificate_path());

        // Another node has another key.
        let dir2 = tempfile::tempdir().unwrap();
        let b = NodeIdentity::load_or_create(dir2.path(), "app1.example.com", KEY).unwrap();
        assert_ne!(b.fingerprint(), first.fingerprint());
    }

    #[test]
    fn the_certificate_names_the_host_and_is_signed_by_the_group_ca() {
        let dir = tempfile::tempdir().unwrap();
        let id = NodeIdentity::load_or_create(dir.path(), "x", KEY).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(id.certificate_pem().as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        let peer = PeerCertificate::from_der(&pem.contents).unwrap();
        assert_eq!(peer, PeerCertificate { host: "x".into(), fingerprint: id.fingerprint() });
        assert!(GroupCa::derive(KEY).unwrap().verify(&cert));
        assert!(!GroupCa::derive(b"not the group key").unwrap().verify(&cert));
        assert!(!cert.is_ca());
    }

    #[test]
    fn a_renamed_node_gets_a_new_certificate_for_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let x = NodeIdentity::load_or_create(dir.path(), "x", KEY).unwrap();
        let y = NodeIdentity::load_or_create(dir.path(), "y", KEY).unwrap();
        assert_eq!(x.fingerprint(), y.fingerprint());
        let (_, pem) = x509_parser::pem::parse_x509_pem(y.certificate_pem().as_bytes()).unwrap();
        assert_eq!(PeerCertificate::from_der(&pem.contents).unwrap().host, "y");
    }

    #[test]
    fn a_damaged_certificate_is_issued_again() {
        let dir = tempfile::tempdir().unwrap();
        let id = NodeIdentity::load_or_create(dir.path(), "x", KEY).unwrap();
        std::fs::write(id.certificate_path(), "garbage").unwrap();
        let again = NodeIdentity::load_or_create(dir.path(), "x", KEY).unwrap();
        assert_eq!(again.certificate_pem(), std::fs::read_to_string(again.certificate_path()).unwrap());
        assert!(again.certificate_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let mode = std::fs::metadata(again.certificate_path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_damaged_key_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let id = NodeIdentity::load_or_create(dir.path(), "x", KEY).unwrap();
        std::fs::write(id.key_path(), "garbage").unwrap();
        let err = NodeIdentity::load_or_create(dir.path(), "x", KEY).unwrap_err();
        assert!(matches!(&err, NetError::KeyFile { path, .. } if path == id.key_path()), "{err}");
    }

    #[test]
    fn a_certificate_for_upper_case_app1_meets_the_pin_of_app1() {
        let dir = tempfile::tempdir().unwrap();
        let pins = super::super::Pins::open(dir.path()).unwrap();
        let app1 = NodeIdentity::load_or_create(tempfile::tempdir().unwrap().path(), "app1", KEY).unwrap();
        assert_eq!(pins.check("app1", app1.fingerprint()).unwrap(), super::super::PinCheck::FirstSeen);

        // Another holder of the group key presents a certificate for `APP1`.
        let intruder = NodeIdentity::with_raw_name(tempfile::tempdir().unwrap().path(), "APP1", KEY);
        let (_, pem) = x509_parser::pem::parse_x509_pem(intruder.certificate_pem().as_bytes()).unwrap();
        assert_eq!(cert_host(&pem.parse_x509().unwrap()).unwrap(), "APP1");
        let peer = PeerCertificate::from_der(&pem.contents).unwrap();
        assert_eq!(peer.host, "app1");
        let err = pins.check(&peer.host, peer.fingerprint).unwrap_err();
        assert!(matches!(&err, NetError::PinMismatch { host, .. } if host == "app1"), "{err}");
        assert_eq!(pins.list().unwrap().len(), 1, "no second pin was made");
    }

    #[test]
    fn this_node_issues_and_keeps_certificates_for_its_canonical_name() {
        let dir = tempfile::tempdir().unwrap();
        let id = NodeIdentity::load_or_create(dir.path(), "App1.Example.COM", KEY).unwrap();
        assert_eq!(id.host(), "app1.example.com");
        let (_, pem) = x509_parser::pem::parse_x509_pem(id.certificate_pem().as_bytes()).unwrap();
        assert_eq!(cert_host(&pem.parse_x509().unwrap()).unwrap(), "app1.example.com");

        // A certificate stored with an upper-case name is issued again.
        let raw = NodeIdentity::with_raw_name(dir.path(), "APP1.example.com", KEY);
        std::fs::write(raw.certificate_path(), raw.certificate_pem()).unwrap();
        let again = NodeIdentity::load_or_create(dir.path(), "APP1.example.com", KEY).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(again.certificate_pem().as_bytes()).unwrap();
        assert_eq!(cert_host(&pem.parse_x509().unwrap()).unwrap(), "app1.example.com");
        assert_eq!(again.fingerprint(), id.fingerprint());
    }

    #[test]
    fn host_names_are_checked() {
        check_host("app0.example.com").unwrap();
        check_host("node_1").unwrap();
        for bad in ["", "a b", "a/b", "é", &"a".repeat(254)] {
            assert!(check_host(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn fingerprints_round_trip_as_text() {
        let fp = Fingerprint::of_public_key(b"spki");
        let text = fp.to_string();
        assert!(text.starts_with("sha256:") && text.len() == 7 + 64);
        assert_eq!(text.parse::<Fingerprint>().unwrap(), fp);
        assert!("sha256:xyz".parse::<Fingerprint>().is_err());
        assert!(text.trim_start_matches("sha256:").parse::<Fingerprint>().is_err());
    }
}
