"""Build the Comfy Registry archive of the pack exactly as `comfy node pack` / `comfy node publish` do.

Run with the Python of a comfy-cli environment (see .ci/comfy_cli.sh): it calls comfy-cli's own
extract_node_configuration (for [tool.comfy].includes) and zip_files (git-tracked files minus .comfyignore, plus
the includes), so the listing the tests check is comfy-cli's, not a re-implementation of its rules.

    usage: <comfy-cli python> .ci/registry_archive.py OUT.zip [--source DIR]
Prints one JSON object: {"archive": OUT.zip, "includes": [...], "files": [sorted archive names]}.
"""
import argparse
import contextlib
import io
import json
import os
import sys
import zipfile


def build(out, source):
    from comfy_cli.file_utils import zip_files
    from comfy_cli.registry import extract_node_configuration

    out = os.path.abspath(out)
    os.chdir(source)  # comfy-cli packs the current directory
    config = extract_node_configuration(os.path.join(source, "pyproject.toml"))
    if config is None:
        raise SystemExit(f"comfy-cli could not read {source}/pyproject.toml")
    includes = list(config.tool_comfy.includes)
    messages = io.StringIO()  # comfy-cli prints notes (no git, missing files); keep stdout for the JSON
    with contextlib.redirect_stdout(messages):
        zip_files(out, includes=includes)
    with zipfile.ZipFile(out) as archive:
        files = sorted(archive.namelist())
    return {"archive": out, "includes": includes, "files": files, "messages": messages.getvalue().splitlines()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--source", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    args = parser.parse_args(argv)
    print(json.dumps(build(args.out, os.path.abspath(args.source))))


if __name__ == "__main__":
    sys.exit(main())
