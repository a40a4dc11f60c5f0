"""The app's signing keys: a key file that cannot be used fails at start-up with a ConfigError."""

from __future__ import annotations

import json

import pytest
from joserfc.jwk import OctKey, RSAKey

from app.errors import ConfigError
from app.keys import load_keys


def test_a_private_jwks_file_gives_one_key_per_alg(tmp_path):
    path = tmp_path / "keys.json"
    key = RSAKey.generate_key(2048, parameters={"alg": "RS384"}, private=True)
    path.write_text(json.dumps({"keys": [key.as_dict(private=True)]}))
    keys = load_keys(str(path))
    assert list(keys.by_alg) == ["RS384"]
    assert keys.key("RS384").kid == key.thumbprint()


@pytest.mark.parametrize("doc, message", [
    ({"kty": "RSA"}, "is not a PEM private key or a JWKS"),  # a single JWK, not a set: no "keys"
    ({"keys": []}, "is not a PEM private key or a JWKS"),
    ({"keys": [OctKey.generate_key(256, private=True).as_dict(private=True)]}, "holds a key of type 'oct'"),
])
def test_an_unusable_jwks_file_is_a_config_error(tmp_path, doc, message):
    path = tmp_path / "keys.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError) as err:
        load_keys(str(path))
    assert message in err.value.message
    assert str(path) in err.value.message
