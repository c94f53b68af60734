//! The hub's certificate authority. Modules trust its certificate (`<data dir>/ca.pem`, also
//! served by the admin API); the proxy mints short-lived leaf certificates from it for the names
//! it intercepts inside CONNECT tunnels.
//!
//! On first start the CA is generated (ECDSA P-256, 10 years) and written next to its key (0600);
//! afterwards it is loaded. In production mount both files from a Secret.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// CA validity for a generated CA.
pub const GENERATED_CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// CA problems. Never contains key material.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A CA file could not be read or written.
    #[error("CA file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Only one of the two files exists.
    #[error(
        "CA certificate and key must both exist or both be absent ({present} exists, {missing} does not)"
    )]
    HalfPresent {
        /// The file that exists.
        present: PathBuf,
        /// The file that does not.
        missing: PathBuf,
    },
    /// The PEM does not hold a usable CA certificate or key.
    #[error("invalid CA material: {0}")]
    Invalid(String),
    /// Signing a leaf failed.
    #[error("cannot mint a certificate for {host:?}: {reason}")]
    Mint {
        /// The requested name.
        host: String,
        /// Why.
        reason: String,
    },
}

impl CaError {
    /// Stable label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Io { .. } => "io",
            Self::HalfPresent { .. } => "half_present",
            Self::Invalid(_) => "invalid",
            Self::Mint { .. } => "mint",
        }
    }
}

/// A minted leaf: DER chain (leaf, CA) and its PKCS#8 key.
pub struct MintedLeaf {
    /// `[leaf, ca]`, DER.
    pub chain_der: Vec<Vec<u8>>,
    /// PKCS#8 DER private key of the leaf.
    pub key_pkcs8_der: Vec<u8>,
    /// When the leaf expires.
    pub not_after: SystemTime,
}

/// The loaded CA: able to sign leaves.
pub struct HubCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: Vec<u8>,
}

impl std::fmt::Debug for HubCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubCa").finish_non_exhaustive()
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `contents` to a new file with mode 0600 (fails if it exists).
pub fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents)?;
    f.sync_all()
}

impl HubCa {
    /// Loads the CA from `cert_path`/`key_path`, or generates and writes both when neither
    /// exists. Returns whether it was generated.
    pub fn load_or_generate(cert_path: &Path, key_path: &Path) -> Result<(Self, bool), CaError> {
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => {
                let cert = std::fs::read_to_string(cert_path).map_err(io_err(cert_path))?;
                let key = std::fs::read_to_string(key_path).map_err(io_err(key_path))?;
                Ok((Self::from_pem(&cert, &key)?, false))
            }
            (false, false) => {
                let (cert_pem, key_pem) = Self::generate_pem("Integration Hub CA")?;
                if let Some(dir) = key_path.parent() {
                    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
                }
                write_private_file(key_path, key_pem.as_bytes()).map_err(io_err(key_path))?;
                std::fs::write(cert_path, &cert_pem).map_err(io_err(cert_path))?;
                Ok((Self::from_pem(&cert_pem, &key_pem)?, true))
            }
            (true, false) => Err(CaError::HalfPresent {
                present: cert_path.to_owned(),
                missing: key_path.to_owned(),
            }),
            (false, true) => Err(CaError::HalfPresent {
                present: key_path.to_owned(),
                missing: cert_path.to_owned(),
            }),
        }
    }

    /// Generates a self-signed CA; returns `(cert_pem, key_pem)`.
    pub fn generate_pem(common_name: &str) -> Result<(String, String), CaError> {
        let invalid = |e: rcgen::Error| CaError::Invalid(e.to_string());
        let key = KeyPair::generate().map_err(invalid)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(invalid)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, "Integration Hub");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + GENERATED_CA_VALIDITY;
        let cert = params.self_signed(&key).map_err(invalid)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Builds the CA from PEM text.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CaError> {
        let key =
            KeyPair::from_pem(key_pem).map_err(|e| CaError::Invalid(format!("CA key: {e}")))?;
        let cert_der = pem_to_der(cert_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)
            .map_err(|e| CaError::Invalid(format!("CA certificate: {e}")))?;
        Ok(Self {
            issuer,
            cert_pem: cert_pem.to_owned(),
            cert_der,
        })
    }

    /// The CA certificate, PEM (what modules trust).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// Mints a leaf for `host` valid for `validity` (backdated an hour for clock skew).
    pub fn mint_leaf(&self, host: &str, validity: Duration) -> Result<MintedLeaf, CaError> {
        let mint = |reason: String| CaError::Mint {
            host: host.to_owned(),
            reason,
        };
        let key = KeyPair::generate().map_err(|e| mint(e.to_string()))?;
        let mut params =
            CertificateParams::new(vec![host.to_owned()]).map_err(|e| mint(e.to_string()))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        let validity_secs = i64::try_from(validity.as_secs()).unwrap_or(i64::MAX / 2);
        params.not_after = now + time::Duration::seconds(validity_secs);
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| mint(e.to_string()))?;
        Ok(MintedLeaf {
            chain_der: vec![cert.der().to_vec(), self.cert_der.clone()],
            key_pkcs8_der: key.serialize_der(),
            not_after: SystemTime::now() + validity,
        })
    }
}

fn pem_to_der(pem_text: &str) -> Result<Vec<u8>, CaError> {
    use base64::Engine;
    let body: String = pem_text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    if body.is_empty() {
        return Err(CaError::Invalid("no CERTIFICATE block in CA PEM".into()));
    }
    base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .map_err(|e| CaError::Invalid(format!("CA PEM base64: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_then_loads_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("ca.pem"), dir.path().join("ca-key.pem"));
        let (ca, generated) = HubCa::load_or_generate(&cert, &key).unwrap();
        assert!(generated);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (again, generated) = HubCa::load_or_generate(&cert, &key).unwrap();
        assert!(!generated);
        assert_eq!(ca.cert_der(), again.cert_der());
        let leaf = again
            .mint_leaf("api.example.com", Duration::from_secs(3600))
            .unwrap();
        assert_eq!(leaf.chain_der.len(), 2);
        assert_eq!(leaf.chain_der[1], ca.cert_der());
    }

    #[test]
    fn half_present_and_garbage_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("ca.pem"), dir.path().join("ca-key.pem"));
        std::fs::write(&cert, "x").unwrap();
        assert_eq!(
            HubCa::load_or_generate(&cert, &key).unwrap_err().kind(),
            "half_present"
        );
        std::fs::write(&key, "not a key").unwrap();
        let err = HubCa::load_or_generate(&cert, &key).unwrap_err();
        assert_eq!(err.kind(), "invalid");
        assert!(!err.to_string().contains("not a key"));
    }
}
