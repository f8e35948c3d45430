//! `cri-pause`: the built-in infra process of a pod sandbox. It holds the pod's
//! namespaces while containers come and go, reaps orphans when it is the pod's PID 1,
//! and exits on SIGTERM or SIGINT. No allocation after start, no threads.

use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};

fn main() {
    let mut set = SigSet::empty();
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGCHLD] {
        set.add(sig);
    }
    // Blocked signals wait for sigwait even when we are PID 1 (which ignores signals
    // that have no handler).
    if let Err(e) = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None) {
        eprintln!("cri-pause: blocking signals: {e}");
        std::process::exit(1);
    }
    loop {
        match set.wait() {
            Ok(Signal::SIGTERM | Signal::SIGINT) => std::process::exit(0),
            Ok(_) => reap(),
            Err(e) => {
                eprintln!("cri-pause: waiting for signals: {e}");
                std::process::exit(1);
            }
        }
    }
}

/// Collects every exited child (orphans of the pod's PID namespace land here).
fn reap() {
    while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}
