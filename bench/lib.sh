# Shell helpers shared by the benchmark scripts (sourced, not run).

# Evaluates a condition every 0.2 s until it holds; gives up (exit 1) after 60 s.
wait_until() {
  local deadline=$((SECONDS + 60))
  until eval "$1"; do
    [ $SECONDS -lt $deadline ] || { echo "timed out: $1" >&2; exit 1; }
    sleep 0.2
  done
}

# The median of the numbers on standard input, one per line.
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
