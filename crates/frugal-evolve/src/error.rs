use thiserror::Error;

/// Everything that can go wrong when setting up or feeding an [`Evolution`](crate::Evolution).
///
/// A rejected [`tell`](crate::Evolution::tell) leaves the state untouched, so the caller can
/// fix the batch and tell again.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum EvolveError {
    /// The search space has no genes.
    #[error("the search space has no genes")]
    EmptySpace,
    /// One gene of the search space is unusable.
    #[error("gene {index} ({name:?}): {reason}")]
    Gene {
        /// Position of the gene in the space.
        index: usize,
        /// The gene's name as given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A setting is out of its range.
    #[error("setting {name}: {reason}")]
    Setting {
        /// The setting's field name.
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The method cannot handle this number of objectives.
    #[error("method {method} needs {needs}, got {objectives} objective(s)")]
    Objectives {
        /// The method's configuration name.
        method: &'static str,
        /// What the method needs, in words.
        needs: &'static str,
        /// The number asked for.
        objectives: usize,
    },
    /// `tell` was called with no batch outstanding.
    #[error("no batch was asked for, or it has been told already")]
    NothingAsked,
    /// The told batch is not the size of the asked one.
    #[error("the asked batch has {expected} candidates, {got} were told")]
    BatchSize {
        /// Candidates asked for.
        expected: usize,
        /// Results told.
        got: usize,
    },
    /// A told candidate was not asked for (or was told already).
    #[error("candidate {id} is not awaiting a result")]
    UnknownCandidate {
        /// The candidate's id.
        id: u64,
    },
    /// The same candidate appears twice in one told batch.
    #[error("candidate {id} is told twice")]
    DuplicateCandidate {
        /// The candidate's id.
        id: u64,
    },
    /// A fitness has the wrong number of objectives.
    #[error("candidate {id}: {got} objective value(s), the run has {expected}")]
    FitnessLength {
        /// The candidate's id.
        id: u64,
        /// The run's number of objectives.
        expected: usize,
        /// Values given.
        got: usize,
    },
    /// A fitness has a negative constraint violation.
    #[error("candidate {id}: constraint violation {violation} is negative")]
    NegativeViolation {
        /// The candidate's id.
        id: u64,
        /// The value given.
        violation: f64,
    },
}
