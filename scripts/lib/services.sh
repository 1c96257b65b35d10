# Shared by scripts/test (and the demo): make sure RabbitMQ and Redis answer on 127.0.0.1,
# starting them when installed but stopped, installing them with apt-get when absent (Debian).
# Every failure is explained in one line.

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

say() { printf '\033[1m==>\033[0m %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Prints a Python expression of `d`, the JSON document on stdin: json 'd["expires_at"]'.
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for_port() { # port seconds name
  local i
  for ((i = 0; i < $2 * 5; i++)); do
    port_open "$1" && return 0
    sleep 0.2
  done
  die "$3 did not start listening on 127.0.0.1:$1 within $2 s"
}

apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "$1 is not installed and apt-get is not available: install $1 yourself, then run this again"
  say "installing $* with apt-get"
  $SUDO apt-get update -qq >/dev/null || die "apt-get update failed (no network or no permission?)"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null \
    || die "apt-get install $* failed"
}

ensure_redis() {
  if port_open 6379; then say "Redis is running on 127.0.0.1:6379"; return; fi
  command -v redis-server >/dev/null 2>&1 || apt_install redis-server redis-tools
  if ! port_open 6379; then
    say "starting Redis"
    local dir="${TMPDIR:-/tmp}/wxpipe-redis"
    mkdir -p "$dir"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --dir "$dir" --logfile "$dir/redis.log" >/dev/null || die "redis-server did not start (see $dir/redis.log)"
  fi
  wait_for_port 6379 20 Redis
  say "Redis is running on 127.0.0.1:6379"
}

ensure_rabbitmq() {
  if port_open 5672 && rabbitmq_ready; then say "RabbitMQ is running on 127.0.0.1:5672"; return; fi
  command -v rabbitmq-server >/dev/null 2>&1 || apt_install rabbitmq-server
  if ! port_open 5672; then
    say "starting RabbitMQ (this takes a few seconds)"
    $SUDO rabbitmq-server -detached >/dev/null 2>&1 || true
  fi
  wait_for_port 5672 90 RabbitMQ
  local i
  for ((i = 0; i < 60; i++)); do rabbitmq_ready && break; sleep 1; done
  rabbitmq_ready || die "RabbitMQ listens on 5672 but is not ready (rabbitmqctl await_startup failed)"
  say "RabbitMQ is running on 127.0.0.1:5672"
}

# The sharded intake (WXPIPE_RAW_SHARDS > 1) needs the consistent-hash exchange; enabling an
# enabled plugin is a no-op.
ensure_rabbitmq_plugins() {
  command -v rabbitmq-plugins >/dev/null 2>&1 || { say "rabbitmq-plugins not found: the sharded-intake tests will say what is missing"; return 0; }
  local plugins="rabbitmq-plugins"
  [ "$(id -u)" -eq 0 ] || plugins="sudo -n rabbitmq-plugins"
  $plugins enable rabbitmq_consistent_hash_exchange >/dev/null 2>&1 \
    || die "could not enable rabbitmq_consistent_hash_exchange (rabbitmq-plugins enable rabbitmq_consistent_hash_exchange)"
  say "RabbitMQ's consistent-hash exchange is enabled"
}

# rabbitmqctl needs the Erlang cookie: root, or sudo for other users.
rabbitmqctl_cmd() {
  if [ "$(id -u)" -eq 0 ]; then rabbitmqctl "$@"; else sudo -n rabbitmqctl "$@"; fi
}

rabbitmq_ready() {
  command -v rabbitmqctl >/dev/null 2>&1 || return 0 # a broker we did not install: trust the port
  rabbitmqctl_cmd await_startup --timeout 5 >/dev/null 2>&1
}

# Chromium for the browser test of the authorization pages (Debian's package).
ensure_chromium() {
  local path="${WXPIPE_CHROMIUM:-/usr/bin/chromium}"
  # A Chinese font, so the screenshots of the Chinese pages show characters, not boxes (the
  # pages load no font of their own: phones have theirs).
  if command -v fc-list >/dev/null 2>&1 && ! fc-list :lang=zh 2>/dev/null | grep -q .; then
    ( apt_install fonts-wqy-zenhei ) || say "no Chinese font could be installed: screenshots show boxes"
  fi
  if [ -x "$path" ]; then say "Chromium is at $path"; return; fi
  apt_install chromium fonts-wqy-zenhei
  [ -x "$path" ] || die "chromium installed but $path is missing: set WXPIPE_CHROMIUM to its path"
  say "Chromium is at $path"
}

# check-jsonschema (PyPI), in a virtualenv under target/, for the test that validates
# docker-compose.yml against the Compose specification's schema (vendored by it: no network).
ensure_check_jsonschema() {
  local venv="${CARGO_TARGET_DIR:-target}/tools/venv"
  if [ ! -x "$venv/bin/check-jsonschema" ]; then
    command -v python3 >/dev/null 2>&1 || apt_install python3 python3-venv
    python3 -m venv "$venv" >/dev/null 2>&1 || { apt_install python3-venv; python3 -m venv "$venv" >/dev/null || die "cannot create a Python virtualenv in $venv"; }
    say "installing check-jsonschema (PyPI) into $venv"
    "$venv/bin/pip" install -q check-jsonschema >/dev/null || die "pip install check-jsonschema failed (no access to PyPI?)"
  fi
  WXPIPE_CHECK_JSONSCHEMA="$(cd "$(dirname "$venv/bin/check-jsonschema")" && pwd)/check-jsonschema"
  export WXPIPE_CHECK_JSONSCHEMA
  say "check-jsonschema is at $WXPIPE_CHECK_JSONSCHEMA"
}

# promtool (Debian's prometheus package), for the tests of the alerting rules and the
# Prometheus configuration in deploy/prometheus. Only the package's files are needed: the
# Prometheus service it may start is stopped again so it does not hold port 9090.
# libfaketime: a scheduler replica whose clock is off (tests/tests/partition.rs).
ensure_faketime() {
  command -v faketime >/dev/null 2>&1 || apt_install faketime
  command -v faketime >/dev/null 2>&1 || die "faketime installed but not on the PATH"
  say "faketime is at $(command -v faketime)"
}

ensure_promtool() {
  if ! command -v promtool >/dev/null 2>&1; then
    apt_install prometheus
    if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true; fi
  fi
  command -v promtool >/dev/null 2>&1 || die "prometheus installed but promtool is not on the PATH"
  say "promtool is at $(command -v promtool)"
}

# mdBook (crates.io), the book of docs/ (scripts/docs): installed once with cargo into
# ~/.cargo/bin, without its web server and file watcher (only `mdbook build` is used).
MDBOOK_VERSION="0.4.52"
ensure_mdbook() {
  local bin="${CARGO_HOME:-$HOME/.cargo}/bin"
  case ":$PATH:" in *":$bin:"*) ;; *) export PATH="$bin:$PATH" ;; esac
  if ! mdbook --version 2>/dev/null | grep -q "v$MDBOOK_VERSION"; then
    say "installing mdbook $MDBOOK_VERSION (crates.io; a few minutes, once)"
    cargo install --quiet --locked mdbook --version "$MDBOOK_VERSION" --no-default-features --features search \
      || die "cargo install mdbook failed (no access to crates.io?)"
  fi
  command -v mdbook >/dev/null 2>&1 || die "mdbook installed but not found in $bin"
  say "mdbook is at $(command -v mdbook) ($(mdbook --version))"
}
