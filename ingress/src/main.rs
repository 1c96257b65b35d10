use clap::Parser;
use ingress::IngressArgs;

/// mimalloc instead of the system allocator (docs/performance.md, "Ingress").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = IngressArgs::parse();
    if args.config_reference {
        use clap::CommandFactory;
        let rows = common::reference::settings(&IngressArgs::command(), "ingress");
        print!("## `ingress`\n\n{}", common::reference::markdown(&rows));
        return std::process::ExitCode::SUCCESS;
    }
    common::telemetry::init_logging();
    let config = match args.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ingress: configuration error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match ingress::server::run(config, common::shutdown::signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ingress: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
