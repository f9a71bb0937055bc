//! Imports a package into a store: `import_package STATE_DIR FILE.gbx`. The benchmark's
//! fallback for when the CLI's `govbox model import` is not at hand.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use govbox_images::{ImportOptions, ModelStore, TrustRoot};
use govbox_provisioning::StatePaths;

fn main() -> ExitCode {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [state, file] = args.as_slice() else {
        eprintln!("usage: import_package STATE_DIR FILE.gbx");
        return ExitCode::from(2);
    };
    let paths = StatePaths::new(state);
    let result = TrustRoot::load(&paths.root_json()).map_err(|e| e.to_string()).and_then(|root| {
        let store = ModelStore::open(&paths).map_err(|e| e.to_string())?;
        store.import_file(file, &root, &ImportOptions::default(), &mut |_, _| {}).map_err(|e| e.to_string())
    });
    match result {
        Ok(i) => {
            let mbps = i.size as f64 / 1e6 / i.secs.max(1e-9);
            println!("imported {} {} ({} bytes) in {:.2} s, {mbps:.0} MB/s", i.name, i.version, i.size, i.secs);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
