//! The anchor's TPM commands, through libtss2's ESAPI (`tss-esapi`). Only in builds with the
//! `tpm` feature. Each call opens its own context: a TPM restarted (or a resource manager that
//! dropped the connection) is reached again by the next head.

use std::str::FromStr;

use tss_esapi::attributes::NvIndexAttributesBuilder;
use tss_esapi::constants::nv_index_type::NvIndexType;
use tss_esapi::handles::{NvIndexHandle, NvIndexTpmHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::resource_handles::{NvAuth, Provision};
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{Auth, MaxNvBuffer, NvPublicBuilder};
use tss_esapi::{Context, TctiNameConf};

use super::{AnchorRecord, Found, RECORD_LEN, TpmAnchorConfig};
use crate::error::{AuditError, Result};

fn tpm_err(step: &'static str) -> impl Fn(tss_esapi::Error) -> AuditError {
    move |e| AuditError::Anchor(format!("{step}: {e}"))
}

fn context(cfg: &TpmAnchorConfig) -> Result<Context> {
    let conf = TctiNameConf::from_str(&cfg.tcti)
        .map_err(|e| AuditError::Anchor(format!("audit.tpm_anchor = \"{}\": not a TCTI: {e}", cfg.tcti)))?;
    let mut ctx =
        Context::new(conf).map_err(|e| AuditError::Anchor(format!("opening the TPM through '{}': {e}", cfg.tcti)))?;
    ctx.set_sessions((Some(AuthSession::Password), None, None));
    Ok(ctx)
}

/// The index's handle with its authorization value set, or `None` when it is not defined.
fn handle(ctx: &mut Context, index: u32, auth: &[u8; 32]) -> Result<Option<NvIndexHandle>> {
    let tpm_handle = NvIndexTpmHandle::new(index).map_err(tpm_err("NV index"))?;
    let defined = ctx.execute_without_session(|ctx| ctx.tr_from_tpm_public(TpmHandle::NvIndex(tpm_handle)));
    let Ok(object) = defined else { return Ok(None) };
    let value = Auth::try_from(auth.to_vec()).map_err(tpm_err("authorization value"))?;
    ctx.tr_set_auth(object, value).map_err(tpm_err("setting the NV index's authorization"))?;
    Ok(Some(NvIndexHandle::from(object)))
}

fn define(ctx: &mut Context, index: u32, kind: NvIndexType, size: usize, auth: &[u8; 32]) -> Result<NvIndexHandle> {
    let attributes = NvIndexAttributesBuilder::new()
        .with_nv_index_type(kind)
        .with_auth_write(true)
        .with_auth_read(true)
        .with_no_da(true)
        .build()
        .map_err(tpm_err("NV attributes"))?;
    let public = NvPublicBuilder::new()
        .with_nv_index(NvIndexTpmHandle::new(index).map_err(tpm_err("NV index"))?)
        .with_index_name_algorithm(HashingAlgorithm::Sha256)
        .with_index_attributes(attributes)
        .with_data_area_size(size)
        .build()
        .map_err(tpm_err("NV public area"))?;
    let value = Auth::try_from(auth.to_vec()).map_err(tpm_err("authorization value"))?;
    let handle = ctx.nv_define_space(Provision::Owner, Some(value.clone()), public).map_err(|e| {
        AuditError::Anchor(format!(
            "defining NV index {index:#010x} with the owner hierarchy (its authorization must be empty, as a \
             TPM comes; or define the indices as the README says): {e}"
        ))
    })?;
    ctx.tr_set_auth(handle.into(), value).map_err(tpm_err("setting the NV index's authorization"))?;
    Ok(handle)
}

fn read_counter(ctx: &mut Context, counter: NvIndexHandle) -> Result<u64> {
    let bytes = ctx.nv_read(NvAuth::NvIndex(counter), counter, 8, 0).map_err(tpm_err("reading the TPM counter"))?;
    let bytes: [u8; 8] =
        bytes.value().try_into().map_err(|_| AuditError::Anchor("the TPM counter is not 8 bytes".into()))?;
    Ok(u64::from_be_bytes(bytes))
}

/// See [`super::Anchor::open`].
pub fn read_or_define(cfg: &TpmAnchorConfig, auth: &[u8; 32]) -> Result<Found> {
    let mut ctx = context(cfg)?;
    let record = handle(&mut ctx, cfg.nv_index, auth)?;
    let counter = handle(&mut ctx, cfg.counter_index(), auth)?;
    match (record, counter) {
        (Some(record), Some(counter)) => {
            let value = read_counter(&mut ctx, counter)?;
            let len = u16::try_from(RECORD_LEN).unwrap_or(u16::MAX);
            match ctx.nv_read(NvAuth::NvIndex(record), record, len, 0) {
                Ok(bytes) => {
                    let rec = AnchorRecord::decode(bytes.value()).ok_or_else(|| {
                        AuditError::Anchor(format!("NV index {:#010x} does not hold an anchor record", cfg.nv_index))
                    })?;
                    Ok(Found::Record(rec, value))
                }
                // Defined but never written: the start that defined it stopped before the first head.
                Err(_) => Ok(Found::Fresh),
            }
        }
        (None, None) => {
            define(&mut ctx, cfg.nv_index, NvIndexType::Ordinary, RECORD_LEN, auth)?;
            let counter = define(&mut ctx, cfg.counter_index(), NvIndexType::Counter, 8, auth)?;
            // A counter reads only once incremented.
            ctx.nv_increment(NvAuth::NvIndex(counter), counter).map_err(tpm_err("starting the TPM counter"))?;
            Ok(Found::Fresh)
        }
        (record, _) => Err(AuditError::Anchor(format!(
            "only one of the anchor's NV indices is defined ({:#010x}: {}, counter {:#010x}: {}): someone removed \
             the other; refused",
            cfg.nv_index,
            if record.is_some() { "defined" } else { "missing" },
            cfg.counter_index(),
            if record.is_some() { "missing" } else { "defined" },
        ))),
    }
}

fn handles(ctx: &mut Context, cfg: &TpmAnchorConfig, auth: &[u8; 32]) -> Result<(NvIndexHandle, NvIndexHandle)> {
    let missing = |i: u32| AuditError::Anchor(format!("NV index {i:#010x} is no longer defined"));
    let record = handle(ctx, cfg.nv_index, auth)?.ok_or_else(|| missing(cfg.nv_index))?;
    let counter = handle(ctx, cfg.counter_index(), auth)?.ok_or_else(|| missing(cfg.counter_index()))?;
    Ok((record, counter))
}

/// Writes `record` (whose counter is the TPM counter's next value), then increments the
/// counter; returns the counter's new value.
pub fn write(cfg: &TpmAnchorConfig, auth: &[u8; 32], record: &AnchorRecord) -> Result<u64> {
    let mut ctx = context(cfg)?;
    let (index, counter) = handles(&mut ctx, cfg, auth)?;
    let now = read_counter(&mut ctx, counter)?;
    let record = AnchorRecord { counter: now + 1, ..*record };
    let data = MaxNvBuffer::try_from(record.encode().to_vec()).map_err(tpm_err("anchor record"))?;
    ctx.nv_write(NvAuth::NvIndex(index), index, data, 0).map_err(tpm_err("writing the anchor record"))?;
    ctx.nv_increment(NvAuth::NvIndex(counter), counter).map_err(tpm_err("incrementing the TPM counter"))?;
    read_counter(&mut ctx, counter)
}

/// Increments the counter; returns its new value.
pub fn increment(cfg: &TpmAnchorConfig, auth: &[u8; 32]) -> Result<u64> {
    let mut ctx = context(cfg)?;
    let (_, counter) = handles(&mut ctx, cfg, auth)?;
    ctx.nv_increment(NvAuth::NvIndex(counter), counter).map_err(tpm_err("incrementing the TPM counter"))?;
    read_counter(&mut ctx, counter)
}
