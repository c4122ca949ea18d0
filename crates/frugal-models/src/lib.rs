//! Model families trained by frugal's engine. Each family is a [`frugal_train::Task`]:
//! how to build the model, run a micro-batch forward and backward (checkpointed, in any
//! precision) and evaluate it, plus what its memory planner needs to know. Also the
//! random neural operators rolled out into trajectory datasets ([`operator`]) and the
//! looped transformer trained by equilibrium propagation ([`eqprop`]).

pub mod classifier;
pub mod eqprop;
pub mod operator;
pub mod particles;
pub mod rollout;
pub mod simulations;
