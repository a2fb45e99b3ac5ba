# Shared helpers for scripts/*.sh (sourced, not run).

# Runs a command as root: directly when we are root, through sudo when it
# exists; fails otherwise (callers then go without the package).
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        return 1
    fi
}
