//! The lecture's lower bounds on the time to distribute a file of `F` bytes from one server to
//! `N` peers:
//!
//! - client-server: `D_cs ≥ max{ N·F/u_s, F/d_min }`
//! - P2P: `D_p2p ≥ max{ F/u_s, F/d_min, N·F/(u_s + Σu_i) }`
//!
//! Rates are in bytes per second, sizes in bytes, times in seconds.

use serde::Serialize;

/// The parameters of one distribution problem.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    /// File size F (bytes).
    pub file_size: f64,
    /// Server upload u_s (bytes/s).
    pub server_upload: f64,
    /// Each peer's upload u_i (bytes/s); its length is N.
    pub peer_uploads: Vec<f64>,
    /// Slowest peer download d_min (bytes/s); `None` = unlimited.
    pub min_download: Option<f64>,
}

/// Impossible parameters.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ProblemError {
    #[error("the file size must be above 0")]
    EmptyFile,
    #[error("the server upload rate must be above 0")]
    NoServerUpload,
    #[error("there must be at least one peer (N ≥ 1)")]
    NoPeers,
    #[error("peer upload rates must be ≥ 0 and finite")]
    BadPeerUpload,
    #[error("the minimum download rate must be above 0")]
    NoDownload,
}

/// Which term of a bound is the largest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Term {
    /// N·F/u_s: the server must send N copies.
    ServerCopies,
    /// F/u_s: the server must send one copy.
    ServerOneCopy,
    /// F/d_min: the slowest peer must receive the file.
    SlowestDownload,
    /// N·F/(u_s + Σu_i): all the bytes must be uploaded by someone.
    TotalUpload,
}

impl Term {
    /// The term as the lecture writes it.
    pub fn formula(self) -> &'static str {
        match self {
            Term::ServerCopies => "N·F/u_s",
            Term::ServerOneCopy => "F/u_s",
            Term::SlowestDownload => "F/d_min",
            Term::TotalUpload => "N·F/(u_s + Σu_i)",
        }
    }
}

/// A bound and the term that sets it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Bound {
    pub seconds: f64,
    pub binding: Term,
}

fn max_term(terms: &[(f64, Term)]) -> Bound {
    let mut best = Bound { seconds: f64::NEG_INFINITY, binding: terms[0].1 };
    for &(s, t) in terms {
        if s > best.seconds {
            best = Bound { seconds: s, binding: t };
        }
    }
    best
}

impl Problem {
    /// N peers, all with upload `peer_upload`.
    pub fn uniform(
        file_size: f64,
        server_upload: f64,
        peer_upload: f64,
        peers: usize,
        min_download: Option<f64>,
    ) -> Self {
        Problem { file_size, server_upload, peer_uploads: vec![peer_upload; peers], min_download }
    }

    /// Checks the parameters make sense.
    pub fn validate(&self) -> Result<(), ProblemError> {
        let pos = |x: f64| x.is_finite() && x > 0.0;
        if !pos(self.file_size) {
            return Err(ProblemError::EmptyFile);
        }
        if !pos(self.server_upload) {
            return Err(ProblemError::NoServerUpload);
        }
        if self.peer_uploads.is_empty() {
            return Err(ProblemError::NoPeers);
        }
        if self.peer_uploads.iter().any(|u| !u.is_finite() || *u < 0.0) {
            return Err(ProblemError::BadPeerUpload);
        }
        if self.min_download.is_some_and(|d| !pos(d)) {
            return Err(ProblemError::NoDownload);
        }
        Ok(())
    }

    /// N.
    pub fn peers(&self) -> usize {
        self.peer_uploads.len()
    }

    fn slowest_download(&self) -> f64 {
        self.min_download.map_or(0.0, |d| self.file_size / d)
    }

    /// D_cs = max{ N·F/u_s, F/d_min }.
    pub fn client_server(&self) -> Bound {
        let n = self.peers() as f64;
        max_term(&[
            (n * self.file_size / self.server_upload, Term::ServerCopies),
            (self.slowest_download(), Term::SlowestDownload),
        ])
    }

    /// D_p2p = max{ F/u_s, F/d_min, N·F/(u_s + Σu_i) }.
    pub fn p2p(&self) -> Bound {
        let n = self.peers() as f64;
        let total: f64 = self.server_upload + self.peer_uploads.iter().sum::<f64>();
        max_term(&[
            (self.file_size / self.server_upload, Term::ServerOneCopy),
            (self.slowest_download(), Term::SlowestDownload),
            (n * self.file_size / total, Term::TotalUpload),
        ])
    }

    /// The same problem with the first `n` peers only (for curves over N).
    pub fn with_peers(&self, n: usize) -> Problem {
        let mut p = self.clone();
        let base = self.peer_uploads.clone();
        p.peer_uploads = (0..n).map(|i| base[i % base.len()]).collect();
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lecture's example: F/u = 1 hour, u_s = 10u, d_min ≥ u_s.
    fn lecture(n: usize) -> Problem {
        let u = 1.0;
        let f = 3600.0 * u;
        Problem::uniform(f, 10.0 * u, u, n, Some(10.0 * u))
    }

    #[test]
    fn lecture_example_client_server_reaches_3_hours_at_30_peers() {
        let b = lecture(30).client_server();
        assert!((b.seconds - 3.0 * 3600.0).abs() < 1e-9);
        assert_eq!(b.binding, Term::ServerCopies);
    }

    #[test]
    fn lecture_example_p2p_stays_under_an_hour() {
        for n in 1..=35 {
            let b = lecture(n).p2p();
            assert!(b.seconds < 3600.0, "N={n}: {} s", b.seconds);
        }
        // N = 30: 30·F/(10u + 30u) = 0.75 h, the total-upload term.
        let b = lecture(30).p2p();
        assert!((b.seconds - 0.75 * 3600.0).abs() < 1e-9);
        assert_eq!(b.binding, Term::TotalUpload);
        // N = 1: one copy from the server, F/u_s = 0.1 h (= F/d_min here; the first wins).
        let b = lecture(1).p2p();
        assert!((b.seconds - 360.0).abs() < 1e-9);
    }

    #[test]
    fn client_server_grows_linearly_and_p2p_is_never_slower() {
        for n in 1..=100 {
            let p = lecture(n);
            assert!((p.client_server().seconds - n as f64 * 360.0).abs() < 1e-6);
            assert!(p.p2p().seconds <= p.client_server().seconds + 1e-9);
        }
    }

    #[test]
    fn impossible_parameters_are_refused() {
        let ok = lecture(3);
        assert_eq!(ok.validate(), Ok(()));
        let mut p = ok.clone();
        p.file_size = 0.0;
        assert_eq!(p.validate(), Err(ProblemError::EmptyFile));
        let mut p = ok.clone();
        p.server_upload = 0.0;
        assert_eq!(p.validate(), Err(ProblemError::NoServerUpload));
        let mut p = ok.clone();
        p.peer_uploads.clear();
        assert_eq!(p.validate(), Err(ProblemError::NoPeers));
        let mut p = ok.clone();
        p.min_download = Some(0.0);
        assert_eq!(p.validate(), Err(ProblemError::NoDownload));
        let mut p = ok;
        p.peer_uploads[1] = f64::NAN;
        assert_eq!(p.validate(), Err(ProblemError::BadPeerUpload));
    }

    #[test]
    fn heterogeneous_uploads_sum() {
        let p = Problem {
            file_size: 100.0,
            server_upload: 10.0,
            peer_uploads: vec![4.0, 1.0, 4.0, 1.0],
            min_download: None,
        };
        // 4·100/(10+10) = 20 s.
        assert_eq!(p.p2p(), Bound { seconds: 20.0, binding: Term::TotalUpload });
        assert_eq!(p.with_peers(2).peer_uploads, vec![4.0, 1.0]);
    }
}
