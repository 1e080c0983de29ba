"""Validates custom resources against the openAPIV3Schema of their CRDs, as the API server's
structural schema check would (types, required fields, enums; unknown fields are refused,
since the API server prunes them silently). Usage: validate_crs.py CRDS.yaml CR.yaml...
Prints one line per problem, ordered by where it is, and exits 1 if there is any."""
import sys

import jsonschema
import yaml


def strict(schema):
    """The schema with `additionalProperties: false` wherever properties are listed (the API
    server drops unknown fields; a typo in an example must fail here instead)."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [strict(v) for v in schema]
    return schema


def main():
    crds = {}
    for crd in yaml.safe_load_all(open(sys.argv[1])):
        names = crd["spec"]["names"]
        for version in crd["spec"]["versions"]:
            api = f'{crd["spec"]["group"]}/{version["name"]}'
            schema = strict(version["schema"]["openAPIV3Schema"])
            # apiVersion, kind and metadata are the API server's to check.
            for field in ("apiVersion", "kind", "metadata"):
                schema.setdefault("properties", {})[field] = {}
            crds[(api, names["kind"])] = schema
    problems = 0
    for path in sys.argv[2:]:
        for doc in yaml.safe_load_all(open(path)):
            key = (doc.get("apiVersion"), doc.get("kind"))
            name = f'{path}: {key[1]} {doc.get("metadata", {}).get("name")}'
            if key not in crds:
                print(f"{name}: no CRD for {key[0]} {key[1]}")
                problems += 1
                continue
            errors = sorted(
                (".".join(map(str, error.absolute_path)), error.message)
                for error in jsonschema.Draft7Validator(crds[key]).iter_errors(doc)
            )
            for where, message in errors:
                print(f"{name}: {where}: {message}")
                problems += 1
    sys.exit(1 if problems else 0)


main()
