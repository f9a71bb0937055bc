//! The quote itself, through libtss2's ESAPI (`tss-esapi`). Only in builds with the `tpm` feature.

use std::str::FromStr;
use std::sync::Mutex;

use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::handles::{KeyHandle, PcrHandle};
use tss_esapi::interface_types::algorithm::{EccSchemeAlgorithm, HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    Data, Digest, DigestValues, EccPoint, EccScheme, KeyDerivationFunctionScheme, PcrSelectionListBuilder, PcrSlot,
    Public, PublicBuilder, PublicEccParametersBuilder, Signature, SignatureScheme, SymmetricDefinitionObject,
};
use tss_esapi::traits::Marshall;
use tss_esapi::{Context, TctiNameConf};

use super::{GOVBOX_PCR, PCR_BANK, PcrValue, QUOTE_FORMAT, QUOTED_PCRS, SIGNATURE_SCHEME, TpmQuote, ak_spki_pem};
use crate::{AttestError, to_hex};

/// One reset–extend–quote sequence at a time in this process, so that two reports never see each
/// other's PCR 23. (Another process using PCR 23 on the same TPM is not guarded against.)
static TPM_LOCK: Mutex<()> = Mutex::new(());

fn tpm_err(step: &'static str) -> impl Fn(tss_esapi::Error) -> AttestError {
    move |e| AttestError::Tpm(format!("{step}: {e}"))
}

fn slot(index: u32) -> Result<PcrSlot, AttestError> {
    PcrSlot::try_from(1u32 << index).map_err(tpm_err("PCR slot"))
}

/// The attestation key template: a restricted ECC P-256 signing key (ECDSA with SHA-256) that
/// never leaves the TPM. Created as a primary key of the endorsement hierarchy, it is the same
/// key every time on one TPM (primary keys derive from the hierarchy seed and the template).
fn ak_template() -> Result<Public, AttestError> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_restricted(true)
        .with_sign_encrypt(true)
        .with_decrypt(false)
        .build()
        .map_err(tpm_err("AK attributes"))?;
    let scheme = EccScheme::create(EccSchemeAlgorithm::EcDsa, Some(HashingAlgorithm::Sha256), None)
        .map_err(tpm_err("AK scheme"))?;
    let params = PublicEccParametersBuilder::new()
        .with_symmetric(SymmetricDefinitionObject::Null)
        .with_ecc_scheme(scheme)
        .with_curve(EccCurve::NistP256)
        .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
        .with_is_signing_key(true)
        .with_is_decryption_key(false)
        .with_restricted(true)
        .build()
        .map_err(tpm_err("AK parameters"))?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(params)
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
        .map_err(tpm_err("AK template"))
}

/// A big-endian integer left-padded to 32 bytes.
fn pad32(bytes: &[u8], what: &'static str) -> Result<[u8; 32], AttestError> {
    let bytes = &bytes[bytes.iter().take_while(|b| **b == 0).count().min(bytes.len())..];
    if bytes.len() > 32 {
        return Err(AttestError::Tpm(format!("{what} is {} bytes, more than a P-256 value", bytes.len())));
    }
    let mut out = [0u8; 32];
    out[32 - bytes.len()..].copy_from_slice(bytes);
    Ok(out)
}

/// See [`super::quote`].
pub(super) fn quote(tcti: &str, nonce: &[u8], measurements_digest: [u8; 32]) -> Result<TpmQuote, AttestError> {
    let conf = TctiNameConf::from_str(tcti).map_err(tpm_err("TCTI configuration"))?;
    let mut ctx = Context::new(conf).map_err(|e| AttestError::Tpm(format!("opening TPM through '{tcti}': {e}")))?;
    let qualifying = Data::try_from(nonce.to_vec()).map_err(tpm_err("nonce as qualifying data"))?;
    let _guard = TPM_LOCK.lock().unwrap_or_else(|p| p.into_inner());

    // PCR 23: reset, then extended once with the measurements digest, so that its value is
    // SHA-256(32 zero bytes || digest), which a verifier recomputes from the report.
    ctx.execute_with_session(Some(AuthSession::Password), |ctx| ctx.pcr_reset(PcrHandle::Pcr23))
        .map_err(tpm_err("resetting PCR 23"))?;
    let mut digests = DigestValues::new();
    digests.set(
        HashingAlgorithm::Sha256,
        Digest::try_from(measurements_digest.to_vec()).map_err(tpm_err("measurements digest"))?,
    );
    ctx.execute_with_session(Some(AuthSession::Password), |ctx| ctx.pcr_extend(PcrHandle::Pcr23, digests))
        .map_err(tpm_err("extending PCR 23"))?;

    let ak = ctx.execute_with_session(Some(AuthSession::Password), |ctx| {
        ctx.create_primary(Hierarchy::Endorsement, ak_template()?, None, None, None, None)
            .map_err(tpm_err("creating the attestation key"))
    })?;
    let result = quote_with(&mut ctx, ak.key_handle, &ak.out_public, qualifying, tcti, measurements_digest);
    let flushed = ctx.flush_context(ak.key_handle.into()).map_err(tpm_err("flushing the attestation key"));
    let q = result?;
    flushed?;
    Ok(q)
}

fn quote_with(
    ctx: &mut Context,
    ak: KeyHandle,
    ak_public: &Public,
    qualifying: Data,
    tcti: &str,
    measurements_digest: [u8; 32],
) -> Result<TpmQuote, AttestError> {
    let Public::Ecc { unique, .. } = ak_public else {
        return Err(AttestError::Tpm("the TPM returned a non-ECC attestation key".into()));
    };
    let mut point = [0u8; 65];
    point[0] = 4;
    point[1..33].copy_from_slice(&pad32(unique.x().value(), "AK x coordinate")?);
    point[33..].copy_from_slice(&pad32(unique.y().value(), "AK y coordinate")?);

    let slots = QUOTED_PCRS.iter().map(|&i| slot(i)).collect::<Result<Vec<_>, _>>()?;
    let selection = PcrSelectionListBuilder::new()
        .with_selection(HashingAlgorithm::Sha256, &slots)
        .build()
        .map_err(tpm_err("PCR selection"))?;
    let (attest, signature) = ctx
        .execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.quote(ak, qualifying, SignatureScheme::Null, selection)
        })
        .map_err(tpm_err("TPM2_Quote"))?;
    let attest = attest.marshall().map_err(tpm_err("marshalling TPMS_ATTEST"))?;
    let Signature::EcDsa(sig) = signature else {
        return Err(AttestError::Tpm(format!("the quote is signed with {:?}, not ECDSA", signature.algorithm())));
    };
    let mut fixed = Vec::with_capacity(64);
    fixed.extend_from_slice(&pad32(sig.signature_r().value(), "signature r")?);
    fixed.extend_from_slice(&pad32(sig.signature_s().value(), "signature s")?);

    // The PCR values, read back (at most 8 per TPM2_PCR_Read): 0-7, then 23.
    let mut pcrs = Vec::with_capacity(QUOTED_PCRS.len());
    for chunk in [&QUOTED_PCRS[..8], &QUOTED_PCRS[8..]] {
        let slots = chunk.iter().map(|&i| slot(i)).collect::<Result<Vec<_>, _>>()?;
        let sel = PcrSelectionListBuilder::new()
            .with_selection(HashingAlgorithm::Sha256, &slots)
            .build()
            .map_err(tpm_err("PCR selection"))?;
        let (_, _, values) = ctx.pcr_read(sel).map_err(tpm_err("TPM2_PCR_Read"))?;
        if values.value().len() != chunk.len() {
            return Err(AttestError::Tpm(format!(
                "TPM2_PCR_Read returned {} values for PCRs {chunk:?} in the {PCR_BANK} bank",
                values.value().len()
            )));
        }
        for (&index, d) in chunk.iter().zip(values.value()) {
            pcrs.push(PcrValue { index, value: to_hex(d.value()) });
        }
    }
    debug_assert_eq!(GOVBOX_PCR, 23);
    Ok(TpmQuote {
        format: QUOTE_FORMAT.to_string(),
        tcti: tcti.to_string(),
        ak_public_key: ak_spki_pem(&point),
        signature_scheme: SIGNATURE_SCHEME.to_string(),
        attest: to_hex(&attest),
        signature: to_hex(&fixed),
        pcr_bank: PCR_BANK.to_string(),
        pcrs,
        measurements_digest: to_hex(&measurements_digest),
    })
}
