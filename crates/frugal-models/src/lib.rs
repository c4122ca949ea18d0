//! Model families trained by frugal's engine. Each family is a [`frugal_train::Task`]:
//! how to build the model, run a micro-batch forward and backward (checkpointed, in any
//! precision) and evaluate it, plus what its memory planner needs to know.

pub mod classifier;
pub mod operator;
pub mod particles;
pub mod rollout;
pub mod simulations;
