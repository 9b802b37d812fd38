"""The win-tasks lint rule's checks: re-download, re-extract, restart every run, dest directories."""

import textwrap
from pathlib import Path

import pytest

import win_common
import win_tasks as wt


def tasks(text, path="roles/demo/tasks/main.yml"):
    return list(win_common.iter_tasks(win_common.load_yaml(textwrap.dedent(text)), Path(path)))


def one(text, **kw):
    return tasks(text, **kw)[0]


def kinds(problems):
    return sorted(p.kind for p in problems)


# --- per-task checks ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("- name: G\n  ansible.windows.win_get_url:\n    url: u\n    dest: C:\\x\n    checksum: abc\n", ["get-url-force"]),
    ("- name: G\n  ansible.windows.win_get_url:\n    url: u\n    dest: C:\\x\n    checksum: abc\n    force: true\n",
     ["get-url-force"]),
    ("- name: G\n  win_get_url:\n    url: u\n    dest: C:\\x\n    checksum_url: u.sha\n", ["get-url-force"]),
    ("- name: G\n  ansible.windows.win_get_url:\n    url: u\n    dest: C:\\x\n    checksum: abc\n    force: false\n", []),
    ("- name: G\n  ansible.windows.win_get_url:\n    url: u\n    dest: C:\\x\n    checksum: abc\n    force: no\n", []),
    ("- name: U\n  community.windows.win_unzip:\n    src: C:\\a.zip\n    dest: C:\\a\n", ["unzip-creates"]),
    ("- name: U\n  community.windows.win_unzip:\n    src: C:\\a.zip\n    dest: C:\\a\n    creates: C:\\a\\x\n", []),
    ("- name: R\n  ansible.windows.win_service:\n    name: a\n    state: restarted\n", ["restart-when"]),
    ("- name: R\n  ansible.windows.win_service:\n    name: a\n    state: restarted\n  when: x is changed\n", []),
    ("- name: R\n  ansible.windows.win_service:\n    name: a\n    state: started\n", []),
    ("- name: R\n  ansible.windows.win_service:\n    name: a\n    state: \"{{ s }}\"\n", []),
    ("- name: B\n  when: x\n  block:\n    - name: R\n      ansible.windows.win_service:\n        name: a\n"
     "        state: restarted\n", []),
])
def test_per_task_checks(text, expected):
    assert kinds(wt.check_task(one(text))) == expected


def test_restart_in_a_handler_is_fine():
    handler = one("- name: R\n  ansible.windows.win_service:\n    name: a\n    state: restarted\n",
                  path="roles/demo/handlers/main.yml")
    assert handler.handler
    assert wt.check_task(handler) == []


# --- resolution -----------------------------------------------------------------------------------------

SCOPE = {
    "root": "C:\\App",
    "conf": "{{ root }}\\conf",
    "sep": "{{ paths[platform]['sep'] }}",
    "paths": {"linux": {"sep": "/"}, "windows": {"sep": "\\"}},
    "platform": "{{ 'windows' if win else 'linux' }}",
    "release": "{{ root }}{{ sep }}releases{{ sep }}{{ version }}",
    "version": "1.0",
    "loop1": "{{ loop1 }}",
}


@pytest.mark.parametrize(("text", "expected"), [
    ("{{ conf }}\\tls\\site.crt", "c:\\app\\conf\\tls\\site.crt"),
    ("{{conf}}/a", "c:\\app\\conf\\a"),
    ("{{ release }}\\x", "c:\\app\\releases\\1.0\\x"),  # per-platform map -> its windows entry
    ("{{ other }}\\x", "{{ other }}\\x"),
    ("{{ root  |  lower }}\\x", "{{ root | lower }}\\x"),  # filters stay as text, whitespace collapsed
    ("{{ loop1 }}\\x", "{{ loop1 }}\\x"),  # a self-reference stops
])
def test_resolve_and_normalise(text, expected):
    assert wt.normalise(wt.resolve(text, SCOPE)) == expected


@pytest.mark.parametrize(("path", "parent"), [
    ("c:\\app\\conf\\a.txt", "c:\\app\\conf"),
    ("{{ x | replace('\\\\', '/') }}\\a", "{{ x | replace('\\\\', '/') }}"),
    ("{{ x }}", None),
    ("c:\\a.txt", "c:"),
])
def test_parent_dir_ignores_backslashes_inside_jinja(path, parent):
    assert wt.parent_dir(path) == parent


# --- dest directories -----------------------------------------------------------------------------------

ROLE_TASKS = """\
- name: Dirs
  ansible.windows.win_file:
    path: "{{ item }}"
    state: directory
  loop:
    - "{{ root }}"
    - '{{ root }}\\conf'
- name: Unzip
  community.windows.win_unzip:
    src: C:\\x.zip
    dest: '{{ root }}\\app'
    creates: '{{ root }}\\app\\a.exe'
"""


def check(task_text, role_tasks=ROLE_TASKS, base=None):
    base = {"root": "C:\\App", "conf": "{{ root }}\\conf"} if base is None else base
    all_tasks = tasks(role_tasks + task_text)
    created = wt.created_dirs(all_tasks, base)
    return wt.check_dest(all_tasks[-1], created, base)


@pytest.mark.parametrize("task_text", [
    "- name: C\n  ansible.windows.win_copy:\n    content: x\n    dest: '{{ conf }}\\a.conf'\n",
    "- name: C\n  ansible.windows.win_template:\n    src: a.j2\n    dest: '{{ root }}\\conf\\a.conf'\n",
    "- name: C\n  ansible.windows.win_copy:\n    content: x\n    dest: 'C:\\APP\\a.txt'\n",  # case-insensitive
    "- name: C\n  ansible.windows.win_copy:\n    src: '{{ root }}\\app\\a.exe'\n    dest: '{{ root }}\\app\\b.exe'\n"
    "    remote_src: true\n",  # win_unzip dest
    "- name: C\n  ansible.windows.win_copy:\n    content: x\n    dest: C:\\Windows\\Temp\\a.txt\n",  # system dir
    "- name: C\n  ansible.windows.win_copy:\n    content: x\n    dest: 'C:\\a.txt'\n",  # drive root
    "- name: C\n  ansible.windows.win_copy:\n    src: files/\n    dest: '{{ root }}\\new\\'\n",  # a directory dest
    "- name: C\n  ansible.windows.win_copy:\n    content: x\n    dest: '{{ item.d }}\\a'\n  loop:\n"
    "    - {d: '{{ root }}'}\n    - {d: '{{ conf }}'}\n",  # each loop item
    "- name: G\n  ansible.windows.win_get_url:\n    url: u\n    dest: '{{ root }}\\conf\\a.zip'\n",
])
def test_dest_in_created_directory_passes(task_text):
    assert check(task_text) == []


def test_dest_in_uncreated_directory_flagged():
    found = check("- name: C\n  ansible.windows.win_copy:\n    content: x\n    dest: '{{ conf }}\\tls\\site.crt'\n")
    assert kinds(found) == ["dest-dir"]
    assert "'c:\\app\\conf\\tls'" in found[0].message


def test_dest_flagged_once_per_bad_loop_item():
    found = check("- name: C\n  ansible.windows.win_copy:\n    content: x\n    dest: '{{ item }}\\a'\n  loop:\n"
                  "    - '{{ root }}'\n    - '{{ root }}\\logs'\n")
    assert len(found) == 1 and "c:\\app\\logs" in found[0].message


def test_directory_created_after_the_write_is_flagged():
    late = "- name: Late\n  ansible.windows.win_file:\n    path: '{{ root }}\\late'\n    state: directory\n"
    write = "- name: C\n  ansible.windows.win_copy:\n    content: x\n    dest: '{{ root }}\\late\\a'\n"
    all_tasks = tasks(ROLE_TASKS + write + late)
    base = {"root": "C:\\App"}
    found = wt.check_dest(all_tasks[2], wt.created_dirs(all_tasks, base), base)
    assert kinds(found) == ["dest-dir"] and "created only after this task" in found[0].message


def test_opaque_dest_is_unresolved():
    found = check("- name: C\n  ansible.windows.win_copy:\n    content: x\n    dest: \"{{ somewhere }}\"\n")
    assert kinds(found) == ["dest-unresolved"]


def test_include_vars_create_directories(tmp_path):
    role = tmp_path / "roles" / "demo"
    (role / "tasks").mkdir(parents=True)
    (role / "tasks" / "mkdir.yml").write_text(
        "---\n- name: Make it\n  ansible.windows.win_file:\n    path: \"{{ dir_to_make }}\"\n    state: directory\n")
    main = role / "tasks" / "main.yml"
    main.write_text(textwrap.dedent("""\
        ---
        - name: Make the data directory
          ansible.builtin.include_tasks: "{{ role_path }}/tasks/mkdir.yml"
          vars:
            dir_to_make: '{{ demo_root }}\\data'
        - name: Write into it
          ansible.windows.win_copy:
            content: x
            dest: '{{ demo_root }}\\data\\a.txt'
        - name: Write elsewhere
          ansible.windows.win_copy:
            content: x
            dest: '{{ demo_root }}\\other\\a.txt'
        """))
    (role / "defaults").mkdir()
    (role / "defaults" / "main.yml").write_text("---\ndemo_root: 'D:\\demo'\n")
    write_ok, write_bad = win_common.tasks_of_file(main)[1:]
    assert wt.check_task_in_role(write_ok) == []
    assert kinds(wt.check_task_in_role(write_bad)) == ["dest-dir"]
    assert "'d:\\demo\\other'" in wt.check_task_in_role(write_bad)[0].message
