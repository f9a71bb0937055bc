//! govbox signed container: model packages (.gbx) and update bundles (.gbu): build, sign, verify, extract, trust policy, model store
#![forbid(unsafe_code)]
