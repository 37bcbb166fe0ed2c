"""`heimdall init`, `heimdall keys show`, `heimdall config show`."""

from __future__ import annotations

import argparse
import stat

from heimdall_core import config
from heimdall_core.cli.common import EXIT_OK, Context, print_json
from heimdall_core.keys import load_signing_key
from heimdall_core.log.checkpoint import NoteSigner
from heimdall_core.log.store import LogStore, init_site, read_site
from heimdall_core.log.verify import origin_for


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    init = sub.add_parser("init", help="create this site: its signing key and its feed")
    init.add_argument("--name", help="site name (default: site_name from the configuration)")
    init.add_argument("--exist-ok", action="store_true", help="succeed if the site already exists")
    init.set_defaults(func=cmd_init)

    keys = sub.add_parser("keys", help="site keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    show = keys_sub.add_parser("show", help="public key and feed id of this site")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_keys_show)

    cfg = sub.add_parser("config", help="configuration")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True)
    cfg_show = cfg_sub.add_parser("show", help="print the effective configuration, secrets redacted")
    cfg_show.add_argument("--json", action="store_true")
    cfg_show.set_defaults(func=cmd_config_show)


def cmd_init(ctx: Context) -> int:
    data_dir = ctx.data_dir
    if ctx.args.exist_ok and (data_dir / "site.json").exists():
        site = read_site(data_dir)
        print(f"site {site.name!r} already initialised in {data_dir}; feed {site.feed.hex()}")
        return EXIT_OK
    site = init_site(data_dir, ctx.args.name or ctx.settings.site_name)
    # Open the feed once so its directory and index files exist.
    with LogStore(data_dir, ctx.log_options()) as store:
        store.writer()
    print(f"initialised site {site.name!r} in {data_dir}")
    print(f"feed id (public key): {site.feed.hex()}")
    print(f"signing key: {data_dir / 'keys' / 'site.key'} (mode 0600; keep it secret, back it up)")
    return EXIT_OK


def cmd_keys_show(ctx: Context) -> int:
    data_dir = ctx.data_dir
    site = read_site(data_dir)
    key_path = data_dir / "keys" / "site.key"
    key = load_signing_key(key_path)
    vkey = NoteSigner(origin_for(site.feed), key.private).vkey()
    mode = stat.S_IMODE(key_path.stat().st_mode)
    store = LogStore(data_dir, ctx.log_options())
    others = [feed.hex() for feed in store.own_feeds() if feed != site.feed]
    if ctx.args.json:
        print_json({"site": site.name, "feed": site.feed.hex(), "public_key": key.public.hex(),
                    "verifier_key": vkey, "key_file": str(key_path), "key_file_mode": f"{mode:o}",
                    "worker_feeds": others})
        return EXIT_OK
    print(f"site:          {site.name}")
    print(f"feed id:       {site.feed.hex()}")
    print(f"public key:    {key.public.hex()}  (Ed25519; the feed id is the public key)")
    print(f"verifier key:  {vkey}")
    print(f"key file:      {key_path} (mode {mode:o})")
    for other in others:
        print(f"worker feed:   {other}")
    return EXIT_OK


def cmd_config_show(ctx: Context) -> int:
    """The effective configuration: the PII policy is shown merged over its defaults (the
    table every field is protected by), and a bad policy fails here as it would at ingest."""
    from heimdall_core.ingest.run import pii_policy

    plain = config.redacted(ctx.settings)
    policy = pii_policy(ctx.settings)
    plain["pii"]["policy"] = {kind: action.value for kind, action in policy.kinds.items()}
    if ctx.args.json:
        print_json(plain)
    else:
        print(config.to_toml(plain), end="")
    return EXIT_OK
