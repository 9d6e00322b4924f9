"""Dependency checks on status paragraphs: Depends (alternatives, versions, Provides), Breaks,
Conflicts, and only the problems a change adds."""

from __future__ import annotations

from debian.deb822 import Deb822

from softudc.images.depends import parse_paragraphs, problems


def para(name: str, version: str, state: str = "installed", **fields: str) -> str:
    extra = "".join(f"{k.replace('_', '-')}: {v}\n" for k, v in fields.items())
    return f"Package: {name}\nStatus: install ok {state}\nVersion: {version}\nArchitecture: amd64\n{extra}"


def check(*paragraphs: str) -> set[str]:
    return problems(parse_paragraphs("\n".join(paragraphs).encode()))


def test_depends_with_versions_alternatives_and_provides() -> None:
    assert check(para("a", "1", Depends="b (>= 2), c | d, mta"), para("b", "2"), para("d", "1"),
                 para("postfix", "3", Provides="mta")) == set()
    assert check(para("a", "1", Depends="b (>= 2)"), para("b", "1.9")) == {"a 1 depends on b (>= 2)"}
    assert check(para("a", "1", Pre_Depends="c | d")) == {"a 1 pre-depends on c | d"}
    assert check(para("a", "1", Depends="v (>= 2)"), para("p", "1", Provides="v (= 2)")) == set()
    assert check(para("a", "1", Depends="v (>= 3)"), para("p", "1", Provides="v (= 2)")) != set()
    assert check(para("a", "1", Depends="v (>= 3)"), para("p", "1", Provides="v")) != set()


def test_config_files_packages_do_not_count() -> None:
    assert check(para("a", "1", Depends="b"), para("b", "1", state="config-files")) == {"a 1 depends on b"}
    assert check(para("a", "1", state="config-files", Depends="b")) == set()


def test_breaks_and_conflicts() -> None:
    assert check(para("a", "1", Breaks="b (<< 2)"), para("b", "1")) == {"a 1 breaks b 1"}
    assert check(para("a", "1", Breaks="b (<< 2)"), para("b", "2")) == set()
    assert check(para("a", "1", Conflicts="b"), para("b", "5")) == {"a 1 conflicts b 5"}
    assert check(para("mta1", "1", Conflicts="mta", Provides="mta")) == set()   # itself


def test_deprecated_relations() -> None:
    assert check(para("a", "1", Depends="b (< 2)"), para("b", "2")) == set()  # "<" means <=


def test_paragraphs_parse_like_deb822() -> None:
    got = parse_paragraphs(b"Package: a\nStatus: install ok installed\n\nPackage: b\n")
    assert [p["Package"] for p in got] == ["a", "b"] and isinstance(got[0], Deb822)
