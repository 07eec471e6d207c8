//! `--gateway URL`: the node a client command talks to. Only the commands
//! that talk to a node take it (`serve` is a node, `bench run` starts one).

use anyhow::Result;

use crate::client::Client;
use crate::credentials;

pub const DEFAULT: &str = "http://127.0.0.1:8080";

#[derive(clap::Args)]
pub struct Gateway {
    /// The node to talk to.
    // Global, so that `sedge secret --gateway URL ls` and `sedge secret ls
    // --gateway URL` both work.
    #[arg(long, global = true, env = "SEDGE_GATEWAY", default_value = DEFAULT, value_name = "URL")]
    gateway: String,
}

impl Gateway {
    /// A client for the node, with the admin credential the CLI finds for it.
    pub fn client(&self) -> Result<Client> {
        let password = credentials::find(&self.gateway)?;
        Ok(Client::new(&self.gateway).with_password(password.as_deref()))
    }
}
