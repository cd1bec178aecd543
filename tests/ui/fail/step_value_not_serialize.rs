use durable::prelude::*;

struct Connection;

async fn connect() -> Result<Connection, String> {
    Ok(Connection)
}

#[durable]
async fn provision(_ctx: &Ctx, input: u32) -> Result<u32, String> {
    let _connection = step!("connect", connect().await)?;
    Ok(input)
}

fn main() {}
