"""Settings: defaults < file < environment < flags, one schema, errors name source and key."""
import pytest

from gitops_ansible import config


def write(tmp_path, text):
    path = tmp_path / "config.toml"
    path.write_text(text)
    return str(path)


def test_precedence_file_then_environment_then_flags(tmp_path):
    path = write(tmp_path, 'env = "dev"\nsplay = 30\nref = "release"\n')
    environ = {"GITOPS_ANSIBLE_SPLAY": "45", "GITOPS_ANSIBLE_LIMIT": "web"}
    settings = config.load({"limit": "db"}, path, environ)
    assert settings.env == "dev" and settings.sources["env"] == path
    assert settings.splay == 45 and "GITOPS_ANSIBLE_SPLAY" in settings.sources["splay"]
    assert settings.limit == "db" and settings.sources["limit"] == "flag --limit"
    assert settings.ref == "release"
    assert settings.lock == "wait" and settings.sources["lock"] == "default"


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    path = write(tmp_path, 'env = "dev"\nsplya = 3\n')
    with pytest.raises(config.ConfigError) as err:
        config.load({}, path, {})
    assert str(err.value).startswith(f"{path}: key 'splya': expected a known setting")


def test_wrong_value_in_file_says_what_is_allowed(tmp_path):
    path = write(tmp_path, 'lock = "forever"\n')
    with pytest.raises(config.ConfigError) as err:
        config.load({}, path, {})
    assert str(err.value) == f"{path}: key 'lock': expected one of wait, fail, got 'forever'"


def test_wrong_type_from_environment_names_the_variable():
    with pytest.raises(config.ConfigError) as err:
        config.load({}, None, {"GITOPS_ANSIBLE_SPLAY": "soon"})
    assert "environment variable GITOPS_ANSIBLE_SPLAY: key 'splay': expected an integer" \
        in str(err.value)


def test_unknown_environment_variable_is_an_error_not_ignored():
    with pytest.raises(config.ConfigError) as err:
        config.load({}, None, {"GITOPS_ANSIBLE_REFF": "main"})
    assert "GITOPS_ANSIBLE_REFF" in str(err.value)


def test_invalid_toml_names_the_file(tmp_path):
    path = write(tmp_path, 'env = "dev\n')
    with pytest.raises(config.ConfigError) as err:
        config.load({}, path, {})
    assert path in str(err.value) and "valid TOML" in str(err.value)


def test_config_file_from_environment_variable(tmp_path):
    path = write(tmp_path, 'env = "staging"\n')
    settings = config.load({}, None, {"GITOPS_ANSIBLE_CONFIG": path})
    assert settings.env == "staging"


def test_token_from_environment_wins_over_file(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    settings = config.load({"git_token_file": str(token_file)}, None, {})
    assert settings.git_token() == "from-file"
    missing = config.load({"git_token_file": str(tmp_path / "nope")}, None, {})
    with pytest.raises(config.ConfigError) as err:
        missing.git_token()
    assert "git_token_file" in str(err.value)


GALAXY = ('[[galaxy_servers]]\nname = "internal"\nurl = "https://hub.example/api/galaxy/"\n'
          'token_file = "{token}"\n[[galaxy_servers]]\nname = "mirror"\n'
          'url = "http://mirror.example/api/"\n')


def test_galaxy_servers_from_the_file_in_order_with_their_tokens(tmp_path):
    token_file = tmp_path / "galaxy.token"
    token_file.write_text("s3cret\n")
    settings = config.load({}, write(tmp_path, GALAXY.format(token=token_file)), {})
    assert [(s.name, s.url) for s in settings.galaxy_servers] == [
        ("internal", "https://hub.example/api/galaxy/"), ("mirror", "http://mirror.example/api/")]
    assert [s.token() for s in settings.galaxy_servers] == ["s3cret", None]
    assert config.load({}, None, {}).galaxy_servers == ()


@pytest.mark.parametrize("text, message", [
    ('[[galaxy_servers]]\nname = "a-b"\nurl = "https://x/"\n',
     "galaxy_servers[0]: key 'name': expected 1 to 63 characters of A-Z, a-z, 0-9 and '_', "
     "got 'a-b'"),
    ('[[galaxy_servers]]\nname = "a"\n',
     "galaxy_servers[0]: key 'url': expected an http:// or https:// URL"),
    ('[[galaxy_servers]]\nname = "a"\nurl = "ftp://x/"\n',
     "galaxy_servers[0]: key 'url': expected an http:// or https:// URL"),
    ('[[galaxy_servers]]\nname = "a"\nurl = "https://x/"\ntoken = "t"\n',
     "galaxy_servers[0]: key 'token': expected one of name, url, token_file"),
    ('[[galaxy_servers]]\nname = "a"\nurl = "https://x/"\n[[galaxy_servers]]\nname = "a"\n'
     'url = "https://y/"\n', "galaxy_servers[1]: key 'name': expected a name no other "
                             "galaxy_servers entry has, got 'a'"),
    ('[galaxy_servers]\nname = "a"\n', "key 'galaxy_servers': expected a list of tables"),
    # credentials in the URL would reach every refusal that names the server: token_file
    ('[[galaxy_servers]]\nname = "a"\nurl = "https://bot:pa55word@hub.example/api/"\n',
     "galaxy_servers[0]: key 'url': expected an http:// or https:// URL without credentials"),
])
def test_bad_galaxy_servers_name_the_file_entry_and_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(config.ConfigError) as err:
        config.load({}, path, {})
    assert str(err.value).startswith(path) and message in str(err.value)
    assert "pa55word" not in str(err.value)


def test_an_unreadable_galaxy_token_file_names_the_entry(tmp_path):
    settings = config.load({}, write(tmp_path, GALAXY.format(token=tmp_path / "nope")), {})
    with pytest.raises(config.ConfigError) as err:
        settings.galaxy_servers[0].token()
    assert "galaxy_servers[0]: key 'token_file': expected a readable file" in str(err.value)


def test_agent_galaxy_servers_at_the_top_and_per_source(tmp_path):
    path = write(tmp_path, 'state_dir = "/tmp/s"\n[[galaxy_servers]]\nname = "top"\n'
                           'url = "https://top/api/"\n[[sources]]\nrepo = "file:///r"\n'
                           'env = "a"\n[[sources]]\nrepo = "file:///r"\nenv = "b"\n'
                           '[[sources.galaxy_servers]]\nname = "own"\nurl = "https://own/"\n')
    loaded = config.load_agent(path, environ={})
    assert [[s.name for s in src.settings.galaxy_servers] for src in loaded.sources] == \
        [["top"], ["own"]]
