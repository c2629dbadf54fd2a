# Sourced by benches/serve-vs-nginx.sh and loadtest/run.sh: the nginx baseline both use.
#   start_nginx WORKDIR PORT   serves WORKDIR/www on 127.0.0.1:PORT (sendfile on);
#                              WORKDIR/nginx.pid is its master's pid
#   nginx_pids WORKDIR         master and worker pids (workers run as www-data, so
#                              WORKDIR and www must be readable by them)
start_nginx() {
  local work=$1 port=$2
  cat > "$work/nginx.conf" <<NGX
worker_processes auto;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 16384; }
http {
  access_log off;
  sendfile on; tcp_nopush on; tcp_nodelay on;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$port; root $work/www; location / { } }
}
NGX
  nginx -c "$work/nginx.conf"
  sleep 0.5
}

nginx_pids() {
  local m
  m=$(cat "$1/nginx.pid")
  echo "$m $(pgrep -P "$m" | tr '\n' ' ')"
}
