#!/bin/sh
# As the official image: redis-server started without a configuration file accepts connections
# from other containers (protected-mode no), runs as the redis user, and keeps its data in /data.
set -eu
if [ "$1" = redis-server ]; then
  shift
  case "${1:-}" in
    *.conf) ;;
    *) set -- --protected-mode no "$@" ;;
  esac
  chown -R redis:redis /data
  exec runuser -u redis -- /usr/bin/redis-server "$@"
fi
exec "$@"
