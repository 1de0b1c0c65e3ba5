#!/usr/bin/env bash
# Build the project's image without a Docker daemon (buildah, chroot isolation, vfs storage) and run
# it for real:
#   (a) the quickstart, `mim train --out /runs/quickstart`, writes results.json (as the image's user
#       into its own /runs, and as an arbitrary uid into a bind-mounted host directory);
#   (b) 2-process CPU DDP (`--accelerator cpu --devices 2 --strategy ddp`) equals 1 process to 1e-4;
#   (c) a derived image (plugins/mim-example-plugin/Dockerfile) lists the example plugin in
#       `mim plugins` and trains with its components.
# The base image is made here with debootstrap (Debian bookworm, minbase, python3 + python3-venv), so
# nothing is pulled from a container registry. The build context is `git archive` of a revision
# (default HEAD), so uncommitted edits in the checkout never reach the image.
#
# Needs root on a Debian/Ubuntu host (installs buildah and debootstrap with apt-get when missing).
# Writes the figures and check results as JSON to $MIM_DOCKER_JSON (default docs/docker_check.json)
# and removes all build storage (4.2 GB at its peak on 2026-11-29, in a temporary directory under
# /var/tmp) at the end. Exits non-zero when a check fails.
#
# Environment: MIM_DOCKER_REF (git revision to build, default HEAD; "worktree" builds the checkout
# as it is), MIM_DOCKER_JSON, MIM_DEBIAN_MIRROR (default http://deb.debian.org/debian),
# MIM_DOCKER_TMP (where the temporary directory goes, default /var/tmp).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
ref=${MIM_DOCKER_REF:-HEAD}
json_out=${MIM_DOCKER_JSON:-$repo/docs/docker_check.json}
mirror=${MIM_DEBIAN_MIRROR:-http://deb.debian.org/debian}
image=localhost/mim-lightning:check
plugin_image=localhost/mim-lightning-example:check
base_image=localhost/mim-base:bookworm

log() { printf '\n== %s\n' "$*" >&2; }
die() { printf 'docker_check: %s\n' "$*" >&2; exit 2; }

[ "$(id -u)" = 0 ] || die "needs root (debootstrap, buildah with chroot isolation)"
missing=()
command -v buildah >/dev/null || missing+=(buildah)
command -v debootstrap >/dev/null || missing+=(debootstrap)
[ -e /usr/share/keyrings/debian-archive-keyring.gpg ] || missing+=(debian-archive-keyring)
if [ ${#missing[@]} -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi

export STORAGE_DRIVER=vfs BUILDAH_ISOLATION=chroot
work=$(mktemp -d "${MIM_DOCKER_TMP:-/var/tmp}/mim-docker.XXXXXX")
bh() { buildah --root "$work/storage" --runroot "$work/run" --storage-driver vfs "$@"; }
cleanup() {
  bh rm --all >/dev/null 2>&1 || true
  bh rmi --all --force >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/results"
results=$work/results

# --- build context -----------------------------------------------------------------------------------
ctx=$work/context
mkdir -p "$ctx"
if [ "$ref" = worktree ]; then
  commit="worktree of $(git -C "$repo" rev-parse HEAD)"
  git -C "$repo" ls-files -z --cached --others --exclude-standard | (cd "$repo" && xargs -0 cp --parents -t "$ctx" 2>/dev/null || true)
else
  commit=$(git -C "$repo" rev-parse "$ref")
  git -C "$repo" archive "$commit" | tar -x -C "$ctx"
fi

# --- pip configuration for RUN steps -----------------------------------------------------------------
# pip inside the build must reach the package index the way it does on this machine: the effective
# configuration (config files and PIP_* variables, merged as pip merges them) goes into one pip.conf
# mounted as /etc/pip.conf, and every local path it names (CA bundle, constraint files, find-links
# directories, file:// indexes) is mounted read-only at the same path.
python3 - "$work/pip.conf" "$work/pip-mounts" <<'EOF'
import ast, configparser, os, re, subprocess, sys
conf, mounts = sys.argv[1:]
listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
values = {}
for line in listing.splitlines():
    m = re.match(r"^([^.=]+)\.([^=]+)=(.*)$", line)
    if m and not m[1].startswith(":"):    # ":env:" entries: the PIP_* variables, read below
        values[(m[1], m[2])] = ast.literal_eval(m[3])
for name, value in os.environ.items():      # PIP_FIND_LINKS=... overrides global.find-links
    if name.startswith("PIP_") and name != "PIP_CONFIG_FILE":
        values[("global", name[4:].lower().replace("_", "-"))] = value
parser = configparser.ConfigParser(interpolation=None)
paths = {"/etc/ssl/certs/ca-certificates.crt"}
for (section, key), value in sorted(values.items()):
    if not parser.has_section(section):
        parser.add_section(section)
    parser.set(section, key, value)
    for word in value.split():
        path = word[len("file://"):] if word.startswith("file://") else word
        if not path.startswith("/"):
            continue
        path = path.rstrip("/")
        if os.path.basename(path) == "simple":   # a file:// index links into its parent (../../files)
            path = os.path.dirname(path)
        if os.path.exists(path):
            paths.add(path)
with open(conf, "w") as f:
    parser.write(f)
with open(mounts, "w") as f:
    for path in sorted(paths):
        if os.path.exists(path):
            f.write(f"{path}\n")
EOF
mount_args=(-v "$work/pip.conf:/etc/pip.conf:ro")
while IFS= read -r path; do mount_args+=(-v "$path:$path:ro"); done <"$work/pip-mounts"
log "pip configuration for the build ($(wc -l <"$work/pip-mounts") paths mounted)"
cat "$work/pip.conf" >&2

# --- base image: Debian bookworm with python3, made with debootstrap ---------------------------------
log "debootstrap bookworm (minbase, python3, python3-venv, ca-certificates) from $mirror"
t0=$(date +%s)
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$work/rootfs" "$mirror" \
  >"$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log" >&2; die "debootstrap failed"; }
rm -rf "$work"/rootfs/var/cache/apt/archives/*.deb "$work"/rootfs/var/lib/apt/lists/*
ctr=$(bh from scratch)
mnt=$(bh mount "$ctr")
tar -C "$work/rootfs" -cf - . | tar -C "$mnt" -xpf -
du -sb "$mnt" | cut -f1 >"$results/base_bytes"
bh umount "$ctr" >/dev/null
bh config --cmd /bin/bash --env LANG=C.UTF-8 "$ctr"
bh commit --quiet --rm "$ctr" "$base_image" >/dev/null
rm -rf "$work/rootfs"
base_seconds=$(( $(date +%s) - t0 ))

# --- the project's image -----------------------------------------------------------------------------
log "buildah bud --build-arg BASE_IMAGE=$base_image -t $image ($commit)"
t0=$(date +%s)
bh bud --pull=never --isolation chroot --layers=false --build-arg BASE_IMAGE="$base_image" "${mount_args[@]}" \
  -t "$image" "$ctx" 2>&1 | tee "$work/build.log" | grep -E '^(STEP|COMMIT|Successfully)' >&2 || true
build_seconds=$(( $(date +%s) - t0 ))
bh inspect --type image "$image" >/dev/null 2>&1 || { tail -40 "$work/build.log" >&2; die "image build failed"; }
bh images --json >"$results/images.json"
bh inspect --type image "$image" >"$results/inspect.json"

ctr=$(bh from --pull=never "$image")
mnt=$(bh mount "$ctr")
du -sb "$mnt" | cut -f1 >"$results/image_bytes"    # the unpacked file system, what `docker images` calls SIZE
bh umount "$ctr" >/dev/null
bh run "$ctr" -- python -c 'import sys, torch; print(sys.version.split()[0], torch.__version__, torch.version.cuda)' \
  >"$results/versions.txt"

# (a) quickstart, as the image's user into the image's /runs; TensorBoard serves that /runs; then as
#     uid 4321 into a bind-mounted host directory (docker run --user ... -v "$PWD/runs:/runs")
log "(a) quickstart"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$work/tb_probe.py" <<PROBE
import json, time, urllib.request
for _ in range(240):
    try:
        print(json.dumps(json.load(urllib.request.urlopen("http://127.0.0.1:$port/data/runs", timeout=2))))
        break
    except Exception:
        time.sleep(0.5)
PROBE
set +e
bh run "$ctr" -- sh -c 'cd /runs && mim train --out /runs/quickstart >&2 && test -s /runs/quickstart/results.json && cat /runs/quickstart/results.json' \
  >"$results/a_results.json" 2>"$results/a.log"
a_rc=$?
bh run -v "$work/tb_probe.py:/tmp/tb_probe.py:ro" "$ctr" -- sh -c \
  "tensorboard --logdir /runs --bind_all --port $port >/tmp/tensorboard.log 2>&1 & python /tmp/tb_probe.py; kill \$!" \
  >"$results/a_tensorboard.json" 2>"$results/a_tensorboard.log"
# buildah 1.28 lets an image VOLUME shadow a -v bind mount at the same path; docker run does not.
# Dropping the declared volume from this working container makes -v host:/runs behave as in Docker.
bh config --volume /runs- "$ctr"
mkdir -p "$work/hostruns" && chown 4321:4321 "$work/hostruns"
bh run --user 4321:4321 -v "$work/hostruns:/runs" "$ctr" -- mim train --out /runs/quickstart >"$results/a2.log" 2>&1
a2_rc=$?

# (b) 2-process CPU DDP against 1 process
log "(b) DDP, 2 processes against 1"
mkdir -p "$work/ddp" && chown 1000:1000 "$work/ddp"
bh run -v "$work/ddp:/runs" "$ctr" -- sh -c \
  'mim train --accelerator cpu --devices 1 --out /runs/one && mim train --accelerator cpu --devices 2 --strategy ddp --out /runs/two' \
  >"$results/b.log" 2>&1
b_rc=$?
set -e
bh rm "$ctr" >/dev/null

# (c) derived image with the example plugin
log "(c) derived image with plugins/mim-example-plugin"
t0=$(date +%s)
bh bud --pull=never --isolation chroot --layers=false --build-arg MIM_IMAGE="$image" "${mount_args[@]}" \
  -f "$ctx/plugins/mim-example-plugin/Dockerfile" -t "$plugin_image" "$ctx/plugins/mim-example-plugin" \
  >"$work/plugin_build.log" 2>&1 || true
plugin_build_seconds=$(( $(date +%s) - t0 ))
set +e
if bh inspect --type image "$plugin_image" >/dev/null 2>&1; then
  ctr=$(bh from --pull=never "$plugin_image")
  bh run "$ctr" -- mim plugins --json >"$results/c_plugins.json" 2>"$results/c.log"
  c_rc=$?
  bh run "$ctr" -- mim train --set data.link=cubic_saddle --set stage1.loss=fair --set model.activation=u_tanh \
    --out /runs/plugin >"$results/c_train.log" 2>&1
  c2_rc=$?
  du -sb "$work/storage" | cut -f1 >"$results/storage_bytes"   # the peak: 3 images and a working container
  bh rm "$ctr" >/dev/null
else
  tail -40 "$work/plugin_build.log" >&2
  c_rc=1; c2_rc=1
fi
set -e

bh images --json >"$results/images.json" 2>/dev/null || true

# --- report ------------------------------------------------------------------------------------------
python3 - "$json_out" "$results" "$work" <<EOF
import json, os, subprocess, sys
out, results, work = sys.argv[1:]

def read(name):
    path = os.path.join(work, name)
    return open(path).read() if os.path.exists(path) else ""

def load(text):
    try:
        return json.loads(text)
    except ValueError:
        return None

def tail(name, n=15):
    return read(name).strip().splitlines()[-n:]

images = {}   # buildah's own figure, as it prints it
for img in load(read("results/images.json")) or []:
    for name in img.get("names") or []:
        images[name] = img.get("size")
oci = (load(read("results/inspect.json")) or {}).get("OCIv1") or {}
config = oci.get("config") or oci.get("Config") or {}
image_bytes = int(read("results/image_bytes") or 0) or None
versions = read("results/versions.txt").split()

# (a)
a = load(read("results/a_results.json"))
a2 = load(read("hostruns/quickstart/results.json"))
check_a = {
    "command": "mim train --out /runs/quickstart",
    "as_image_user_into_image_runs": {"ok": $a_rc == 0 and a is not None,
                                      "test_rel_mse": a and a.get("test_rel_mse"),
                                      "principal_cosines": a and a.get("principal_cosines")},
    "as_uid_4321_into_bind_mounted_host_dir": {"ok": $a2_rc == 0 and a2 is not None,
                                               "same_numbers": a is not None and a2 is not None
                                               and all(a[k] == a2[k] for k in ("test_rel_mse", "principal_cosines"))},
}
tb_runs = load(read("results/a_tensorboard.json"))
check_a["tensorboard_serves_runs"] = {
    "command": "tensorboard --logdir /runs --bind_all", "runs": tb_runs,
    "ok": isinstance(tb_runs, list) and any(str(run).startswith("quickstart") for run in tb_runs)}
check_a["ok"] = all(check_a[k]["ok"] for k in ("as_image_user_into_image_runs", "tensorboard_serves_runs",
                                              "as_uid_4321_into_bind_mounted_host_dir"))
if not check_a["ok"]:
    check_a["log_tail"] = tail("results/a.log") + tail("results/a_tensorboard.log") + tail("results/a2.log")

# (b)
one = load(read("ddp/one/results.json"))
two = load(read("ddp/two/results.json"))
keys = ("principal_cosines", "test_rel_mse", "spectral_principal_cosines")
as_list = lambda v: v if isinstance(v, list) else [v]
diffs = {}
if one and two:
    for k in keys:
        x, y = as_list(one.get(k)), as_list(two.get(k))
        diffs[k] = max(abs(p - q) for p, q in zip(x, y)) if len(x) == len(y) and x and None not in x + y else None
check_b = {
    "commands": ["mim train --accelerator cpu --devices 1 --out /runs/one",
                 "mim train --accelerator cpu --devices 2 --strategy ddp --out /runs/two"],
    "tolerance": 1e-4,
    "max_abs_difference": diffs,
    "one_process": one and {k: one.get(k) for k in keys},
    "two_processes": two and {k: two.get(k) for k in keys},
}
check_b["ok"] = $b_rc == 0 and len(diffs) == len(keys) and all(d is not None and d <= 1e-4 for d in diffs.values())
if not check_b["ok"]:
    check_b["log_tail"] = tail("results/b.log", 30)

# (c)
listing = load(read("results/c_plugins.json")) or []
example = [p for p in listing if p.get("distribution") == "mim-example-plugin"]
check_c = {
    "dockerfile": "plugins/mim-example-plugin/Dockerfile",
    "command": "mim plugins --json",
    "example_plugin": example[0] if example else None,
    "train_with_plugin_components": {
        "command": "mim train --set data.link=cubic_saddle --set stage1.loss=fair --set model.activation=u_tanh",
        "ok": $c2_rc == 0},
}
check_c["ok"] = ($c_rc == 0 and len(example) == 1 and not example[0].get("error")
                 and check_c["train_with_plugin_components"]["ok"])
if not check_c["ok"]:
    check_c["log_tail"] = tail("results/c.log") + tail("results/c_train.log") + tail("plugin_build.log")

buildah = subprocess.run(["buildah", "--version"], capture_output=True, text=True).stdout.strip()
with open("/etc/os-release") as f:
    os_name = dict(line.rstrip().split("=", 1) for line in f if "=" in line).get("PRETTY_NAME", "").strip('"')
report = {
    "date": subprocess.run(["date", "-u", "+%Y-%m-%d"], capture_output=True, text=True).stdout.strip(),
    "command": "scripts/docker_check.sh" if "$ref" == "HEAD" else "MIM_DOCKER_REF=$ref scripts/docker_check.sh",
    "build_storage_bytes_peak": int(read("results/storage_bytes") or 0) or None,
    "source": "git archive $commit" if "$ref" != "worktree" else "$commit",
    "machine": {"cpu_cores": os.cpu_count(), "os": os_name, "buildah": buildah,
                "isolation": "chroot", "storage_driver": "vfs", "gpu": None},
    "base_image": {"name": "$base_image",
                   "how": "debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm",
                   "seconds": $base_seconds, "rootfs_bytes": int(read("results/base_bytes") or 0) or None,
                   "buildah_images_size": images.get("$base_image")},
    "image": {"name": "$image", "build_seconds": $build_seconds,
              "build_command": "buildah bud --pull=never --isolation chroot --layers=false --build-arg BASE_IMAGE=$base_image -t $image .",
              "rootfs_bytes": image_bytes, "size_mb": image_bytes and round(image_bytes / 1e6),
              "buildah_images_size": images.get("$image"),
              "python": versions[0] if versions else None,
              "torch": versions[1] if len(versions) > 1 else None,
              "torch_cuda": versions[2] if len(versions) > 2 else None,
              "entrypoint": config.get("Entrypoint"), "cmd": config.get("Cmd"), "user": config.get("User"),
              "workdir": config.get("WorkingDir"), "volumes": sorted(config.get("Volumes") or {})},
    "plugin_image": {"name": "$plugin_image", "build_seconds": $plugin_build_seconds,
                     "buildah_images_size": images.get("$plugin_image")},
    "checks": {"a_quickstart": check_a, "b_ddp_2_equals_1": check_b, "c_plugin_image": check_c},
}
report["image"]["entrypoint_ok"] = report["image"]["entrypoint"] == ["mim"]
report["ok"] = check_a["ok"] and check_b["ok"] and check_c["ok"] and report["image"]["entrypoint_ok"]
os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
with open(out, "w") as f:
    json.dump(report, f, indent=2)
    f.write("\n")
print(json.dumps({"ok": report["ok"], "build_seconds": $build_seconds, "size_mb": report["image"]["size_mb"],
                  "a": check_a["ok"], "b": check_b["ok"], "b_max_abs_difference": diffs, "c": check_c["ok"]}))
sys.exit(0 if report["ok"] else 1)
EOF
