"""`minimoe data`: fetch training corpora into the cache (~/.cache/minimoe, or $MINIMOE_CACHE)."""
from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser("data", help="download a training corpus into the cache",
                       description="Download a training corpus into the cache (~/.cache/minimoe or "
                                   "$MINIMOE_CACHE), checking its size and md5. Then train on it with "
                                   "`minimoe train --data shakespeare`.")
    p.add_argument("name", choices=["shakespeare"], help="tinyshakespeare (1,115,394 bytes), from char-rnn")
    p.add_argument("--from", dest="source", metavar="URL_OR_PATH",
                   help="another URL (http, https, file) or a local copy to take it from")
    p.add_argument("--cache", metavar="DIR", help="cache folder (default $MINIMOE_CACHE or ~/.cache/minimoe)")
    p.add_argument("--force", action="store_true", help="fetch again even if the cache has a good copy")
    p.set_defaults(func=run)


def run(args) -> int:
    from minimoe.train import data
    path = data.fetch_shakespeare(args.source, cache=args.cache, force=args.force)
    print(f"tinyshakespeare: {path} ({data.SHAKESPEARE_BYTES:,} bytes, md5 {data.SHAKESPEARE_MD5})")
    return 0
