pub mod deploy;
pub mod describe;
pub mod invoke;
pub mod logs;
pub mod ls;
pub mod rm;
pub mod scale;
pub mod serve;
