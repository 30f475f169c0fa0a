//! Tests of the whole pipeline: text in, resolved groups out.
//!
//! Fixtures live in `fixtures/config/`: `spec-example.cfg` is the
//! acceptance config of the product specification, verbatim;
//! `csync2-sample.cfg` is written in the style of csync2's shipped sample;
//! `include/` and `cycle/` exercise `config FILE;`.

use std::path::{Path, PathBuf};

use super::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/config").join(name)
}

fn parse(src: &str) -> Result<Config, ConfigError> {
    parse_str(src, Path::new("/etc/snapsync.cfg"))
}

fn parse_ok(src: &str) -> Config {
    parse(src).unwrap_or_else(|e| panic!("{e}"))
}

fn err(src: &str) -> String {
    parse(src).expect_err("config should be rejected").to_string()
}

fn class(g: &ResolvedGroup, path: &str) -> Class {
    g.matcher.classify(Path::new(path))
}

#[test]
fn spec_example_resolves_for_app0() {
    let config = load(&fixture("spec-example.cfg")).unwrap();
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    assert_eq!(config.port, DEFAULT_PORT);
    let groups = config.resolve("app0.example.com").unwrap();
    assert_eq!(groups.len(), 1);
    let g = &groups[0];
    assert_eq!(g.name, "app");
    assert_eq!(g.hosts.len(), 3);
    assert_eq!(g.local, HostEntry::new("app0.example.com"));
    assert_eq!(g.peers().map(|h| h.name.as_str()).collect::<Vec<_>>(), ["app1.example.com", "app2.example.com"]);
    assert_eq!(g.key.as_deref(), Some(Path::new("/etc/csync2.key-app")));
    assert_eq!(
        g.roots,
        vec![
            IncludeRoot { logical: "/vol/0/app/shared".into(), local: "/vol/0/app/shared".into() },
            IncludeRoot { logical: "/vol/0/app/spool".into(), local: "/vol/0/app/spool".into() },
        ]
    );
    assert_eq!(g.backup_directory.as_deref(), Some(Path::new("/vol/csync2/backup")));
    assert_eq!(g.backup_generations, 3);
    assert_eq!(g.auto, AutoPolicy::None);
    assert_eq!(g.ignore, Ignore::default());
    assert!(g.actions.is_empty());

    assert_eq!(class(g, "/vol/0/app/shared/img/a.png"), Class::Included);
    assert_eq!(class(g, "/vol/0/app/spool"), Class::Included);
    assert_eq!(class(g, "/vol/0/app"), Class::Ancestor);
    assert_eq!(class(g, "/vol/0/app/other"), Class::Excluded);
    assert_eq!(class(g, "/vol/0/app/shared.bak"), Class::Excluded);

    // Host names compare case-insensitively, as in csync2.
    assert_eq!(config.resolve("APP1.example.com").unwrap()[0].local.name, "app1.example.com");
    let e = config.resolve("db0.example.com").unwrap_err();
    assert!(matches!(e, ConfigError::NotAMember { .. }), "{e}");
}

#[test]
fn csync2_style_sample() {
    let config = load(&fixture("csync2-sample.cfg")).unwrap();
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    let group = &config.groups[0];
    assert_eq!(group.name, "websites");
    assert_eq!(
        group.hosts,
        vec![
            HostEntry::new("alpha"),
            HostEntry::new("bravo"),
            HostEntry { receive_only: true, ..HostEntry::new("charlie") },
            HostEntry { addr: Some("delta-repl".into()), ..HostEntry::new("delta") },
        ]
    );
    assert_eq!(group.key.as_deref(), Some("/etc/csync2.key_websites"));
    let kinds: Vec<(PatternKind, &str)> = group.patterns.iter().map(|p| (p.kind, p.text.as_str())).collect();
    assert_eq!(
        kinds,
        [
            (PatternKind::Include, "/etc/nginx"),
            (PatternKind::Include, "%sites%/public"),
            (PatternKind::Exclude, "%sites%/public/cache"),
            (PatternKind::Exclude, "*~"),
            (PatternKind::Exclude, ".*"),
        ]
    );
    assert_eq!(
        group.actions[0],
        Action {
            patterns: vec!["/etc/nginx/nginx.conf".into(), "/etc/nginx/conf.d/*".into()],
            exec: vec!["/usr/sbin/nginx -s reload".into()],
            logfile: Some("/var/log/csync2_nginx.log".into()),
            do_local: true,
            do_local_only: false,
        }
    );
    assert!(group.actions[1].do_local && group.actions[1].do_local_only);
    assert_eq!(group.actions[1].logfile, None);
    assert_eq!((group.backup_directory.as_deref(), group.backup_generations), (Some("/var/backups/csync2"), 5));
    assert_eq!(group.auto, AutoPolicy::Younger);
    assert_eq!(config.prefixes[0].entries.len(), 3);

    let alpha = &config.resolve("alpha").unwrap()[0];
    assert_eq!(
        alpha.roots.iter().map(|r| (r.logical.as_str(), r.local.as_path())).collect::<Vec<_>>(),
        [("%sites%/public", Path::new("/data/sites/public")), ("/etc/nginx", Path::new("/etc/nginx"))]
    );
    assert_eq!(class(alpha, "/data/sites/public/index.html"), Class::Included);
    assert_eq!(class(alpha, "/data/sites/public/cache/x"), Class::Excluded);
    assert_eq!(class(alpha, "/data/sites/public/.git"), Class::Excluded);
    assert_eq!(class(alpha, "/etc/nginx/nginx.conf~"), Class::Excluded);
    assert_eq!(class(alpha, "/data/sites"), Class::Ancestor);
    assert_eq!(class(alpha, "/var/www/public/x"), Class::Excluded);

    let charlie = &config.resolve("charlie").unwrap()[0];
    assert!(charlie.local.receive_only);
    assert_eq!(charlie.roots[0].local, Path::new("/var/www/public"));
    let bravo = &config.resolve("bravo").unwrap()[0];
    assert_eq!(bravo.roots[0].local, Path::new("/srv/sites/public"));
    // delta is matched by its name, not its address.
    assert_eq!(config.resolve("delta").unwrap()[0].local.addr.as_deref(), Some("delta-repl"));
    assert!(config.resolve("delta-repl").is_err());

    // Actions, as csync2 schedules them.
    let conf = Path::new("/etc/nginx/conf.d/site.conf");
    assert_eq!(alpha.actions_for(conf, false).len(), 1);
    assert_eq!(alpha.actions_for(conf, true).len(), 1, "do-local runs on the origin too");
    let index = Path::new("/data/sites/public/index.html");
    assert_eq!(alpha.actions_for(index, false).len(), 0, "do-local-only never runs on receivers");
    assert_eq!(alpha.actions_for(index, true)[0].exec[0], "/usr/local/bin/notify-deploy %%");
    assert_eq!(alpha.actions[1].patterns, ["/data/sites/public/index.html"]);
}

#[test]
fn unknown_directive_names_its_line_and_column() {
    let src = "group g {\n host a b;\n key /k;\n\tfrobnicate /x;\n}\n";
    let e = parse(src).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains(":4:"), "{msg}");
    insta::assert_snapshot!(msg, @r#"/etc/snapsync.cfg:4:2: expected a directive (host, key, include, exclude, compare, auto, action, backup-directory, backup-generations, backup-keep) or '}' to end the group, found "frobnicate""#);
    assert_eq!(e.location().map(|l| (l.line, l.column)), Some((4, 2)));

    insta::assert_snapshot!(err("frobnicate;"), @r#"/etc/snapsync.cfg:1:1: expected a top-level directive (group, prefix, ignore, config, nossl, database, tempdir, lock-timeout, port), found "frobnicate""#);
    insta::assert_snapshot!(err("host a;"), @r#"/etc/snapsync.cfg:1:1: expected a top-level directive (group, prefix, ignore, config, nossl, database, tempdir, lock-timeout, port) ("host" belongs inside a group), found keyword "host""#);
}

#[test]
fn syntax_errors_say_what_was_expected_and_found() {
    insta::assert_snapshot!(err("group g { host a; key /k;"), @"/etc/snapsync.cfg:1:26: expected '}' to end group \"g\" (opened at /etc/snapsync.cfg:1:1), found end of file");
    insta::assert_snapshot!(err("group g { key /k }"), @"/etc/snapsync.cfg:1:18: expected ';' after the key file name, found '}'");
    insta::assert_snapshot!(err("group g { include key; }"), @"/etc/snapsync.cfg:1:19: expected a pattern or ';', found keyword \"key\"");
    insta::assert_snapshot!(err("group g { host (a (b)); }"), @"/etc/snapsync.cfg:1:19: expected a host name or ')' to close the '(' at /etc/snapsync.cfg:1:16, found '('");
    insta::assert_snapshot!(err("group g{ }"), @r#"/etc/snapsync.cfg:1:10: expected '{' to start the group body ("g{" was read as the group name: put a space before '{'), found '}'"#);
    insta::assert_snapshot!(err("prefix p { on h:/x; }"), @"/etc/snapsync.cfg:1:19: expected ':' after the host name pattern (a ':' needs white space after it), found ';'");
    insta::assert_snapshot!(err("group g { action { frob; } }"), @r#"/etc/snapsync.cfg:1:20: expected an action directive (pattern, exec, logfile, do-local, do-local-only) or '}' to end the action, found "frob""#);
    insta::assert_snapshot!(err("group g { key /k; do-local; }"), @r#"/etc/snapsync.cfg:1:19: expected a directive (host, key, include, exclude, compare, auto, action, backup-directory, backup-generations, backup-keep) or '}' to end the group, found keyword "do-local""#);
}

#[test]
fn semantic_errors() {
    insta::assert_snapshot!(err("group g { key /k; backup-generations three; }"), @r#"/etc/snapsync.cfg:1:38: backup-generations: expected a number from 0 to 4294967295, found "three""#);
    insta::assert_snapshot!(err("group g { key /k; auto newest; }"), @r#"/etc/snapsync.cfg:1:24: auto: expected none, first, younger, older, bigger, smaller, left or right, found "newest""#);
    insta::assert_snapshot!(err("group g { key /k; auto none; auto first; }"), @"/etc/snapsync.cfg:1:30: a group may only have one auto (the first is at /etc/snapsync.cfg:1:19)");
    insta::assert_snapshot!(err("group g { key /k; key /j; }"), @"/etc/snapsync.cfg:1:19: a group may only have one key (the first is at /etc/snapsync.cfg:1:11)");
    insta::assert_snapshot!(err("group g { host a; }"), @r#"/etc/snapsync.cfg:1:1: group "g" has no key; every group needs exactly one `key FILE;`"#);
    insta::assert_snapshot!(err("group g { key /k; }\ngroup g { key /k; }"), @r#"/etc/snapsync.cfg:2:1: duplicate group name "g" (first defined at /etc/snapsync.cfg:1:1)"#);
    insta::assert_snapshot!(err("group g { key /k; include %www%/x; }"), @"/etc/snapsync.cfg:1:27: unknown prefix %www% (no `prefix www { ... }` block is declared)");
    insta::assert_snapshot!(err("group g { key /k; include %www; }"), @r#"/etc/snapsync.cfg:1:27: expected %NAME% optionally followed by /path, found "%www""#);
    insta::assert_snapshot!(err("prefix p { on *: srv; }"), @r#"/etc/snapsync.cfg:1:18: prefix path must be absolute, found "srv""#);
    insta::assert_snapshot!(err("ignore uid perms;"), @r#"/etc/snapsync.cfg:1:12: ignore: expected uid, gid or mod, found "perms""#);
    insta::assert_snapshot!(err("port 0;"), @r#"/etc/snapsync.cfg:1:6: port: expected a port number from 1 to 65535, found "0""#);
    insta::assert_snapshot!(err("group g { key /k; host a@b:http; }"), @r#"/etc/snapsync.cfg:1:26: host: expected a port number from 1 to 65535 after the address's ':', found "b:http""#);
    insta::assert_snapshot!(err("exec \"x"), @r#"/etc/snapsync.cfg:1:6: expected a closing '"' for this quoted string, found end of file"#);
    // Unknown prefixes are found wherever they are used.
    assert!(err("group g { key %k%/key; }").contains("unknown prefix %k%"));
    assert!(err("group g { key /k; backup-directory %b%/x; }").contains("unknown prefix %b%"));
    assert!(err("group g { key /k; action { pattern %a%/x; } }").contains("unknown prefix %a%"));
}

#[test]
fn backup_keep_takes_rules_with_values() {
    let c = parse_ok("group g { key /k; backup-keep hourly 24 daily 14 weekly 8 monthly 6 within 2days; }");
    let want = KeepPolicy { within: Some(2 * 86_400), hourly: 24, daily: 14, weekly: 8, monthly: 6 };
    assert_eq!(c.groups[0].backup_keep, want);
    let c = parse_ok("group g { key /k; backup-keep daily 7; backup-keep hourly 3; }");
    assert_eq!(c.groups[0].backup_keep, KeepPolicy { hourly: 3, ..KeepPolicy::default() }, "the last one wins");
    assert_eq!(parse_ok("group g { key /k; }").groups[0].backup_keep, KeepPolicy::default());
}

#[test]
fn backup_keep_errors_name_file_line_and_the_bad_value() {
    insta::assert_snapshot!(err("group g { key /k;\n backup-keep hourly many; }"), @r#"/etc/snapsync.cfg:2:21: backup-keep: expected a number from 0 to 4294967295 after hourly, found "many""#);
    insta::assert_snapshot!(err("group g { key /k;\n backup-keep yearly 3; }"), @r#"/etc/snapsync.cfg:2:14: backup-keep: expected a rule (within, hourly, daily, weekly, monthly), found "yearly""#);
    insta::assert_snapshot!(err("group g { key /k;\n backup-keep within soon; }"), @r#"/etc/snapsync.cfg:2:21: backup-keep: expected a duration such as 36h, 14days or 2weeks after within, found "soon""#);
    insta::assert_snapshot!(err("group g { key /k;\n backup-keep; }"), @"/etc/snapsync.cfg:2:13: expected a backup-keep rule (within, hourly, daily, weekly, monthly), found ';'");
    insta::assert_snapshot!(err("group g { key /k;\n backup-keep daily 3 }"), @"/etc/snapsync.cfg:2:22: expected a backup-keep rule (within, hourly, daily, weekly, monthly) or ';', found '}'");
}

#[test]
fn every_group_directive() {
    let c = parse_ok(
        r#"
        group g {
            host a b (c d@10.0.0.4) e@e-repl:4000;
            host "f";
            host;
            key keys/g.key;
            include /a /b/;
            include;
            exclude /a/tmp *.o;
            compare /c;
            auto bigger;
            backup-directory /backup;
            backup-directory /backup2;
            backup-generations 0;
            action { pattern /a/x /a/y; pattern; exec "one %%" two; logfile /var/log/x; }
            action { }
        }
        "#,
    );
    let g = &c.groups[0];
    assert_eq!(
        g.hosts.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["a", "b", "(c)", "(d@10.0.0.4)", "e@e-repl:4000", "f"]
    );
    assert_eq!(g.key.as_deref(), Some("keys/g.key"));
    let pats: Vec<String> = g.patterns.iter().map(|p| format!("{:?} {}", p.kind, p.text)).collect();
    assert_eq!(pats, ["Include /a", "Include /b", "Exclude /a/tmp", "Exclude *.o", "Compare /c"]);
    assert_eq!(g.patterns[1].location.column, 24);
    assert_eq!(g.auto, AutoPolicy::Bigger);
    assert_eq!(g.backup_directory.as_deref(), Some("/backup2"), "the last one wins, as in csync2");
    assert_eq!(g.backup_generations, 0);
    assert_eq!(g.actions.len(), 2);
    assert_eq!(g.actions[0].patterns, ["/a/x", "/a/y"]);
    assert_eq!(g.actions[0].exec, ["one %%", "two"]);
    assert_eq!(g.actions[1], Action::default());

    // Relative key names are relative to the system directory.
    let mut c = c;
    c.system_dir = PathBuf::from("/opt/etc");
    let r = &c.resolve("a").unwrap()[0];
    assert_eq!(r.key.as_deref(), Some(Path::new("/opt/etc/keys/g.key")));
    assert_eq!(r.roots.iter().map(|r| r.logical.as_str()).collect::<Vec<_>>(), ["/a", "/b"]);
    // Compare patterns count only in compare mode.
    assert_eq!(class(r, "/c/x"), Class::Excluded);
    assert_eq!(r.compare_matcher.classify(Path::new("/c/x")), Class::Included);
    // Left and right are relative to the local host's place in the list.
    let c_view = &c.resolve("c").unwrap()[0];
    assert!(c_view.is_left_of_local("a") && c_view.is_left_of_local("b"));
    assert!(!c_view.is_left_of_local("d") && !c_view.is_left_of_local("zz"));
    assert_eq!(c_view.host("E").map(|h| h.connect_host()), Some("e-repl"));
    assert_eq!(c_view.host("e").map(|h| h.port_or(c.port)), Some(4000));
    assert_eq!(c_view.host("a").map(|h| h.port_or(c.port)), Some(DEFAULT_PORT));
}

#[test]
fn compare_with_several_patterns_makes_all_but_the_last_includes() {
    let c = parse_ok("group g { key /k; compare /a /b /c; }");
    let kinds: Vec<PatternKind> = c.groups[0].patterns.iter().map(|p| p.kind).collect();
    assert_eq!(kinds, [PatternKind::Include, PatternKind::Include, PatternKind::Compare]);
    assert_eq!(c.warnings.len(), 1);
    assert!(c.warnings[0].message.contains("all but the last are include patterns"));
}

#[test]
fn top_level_directives() {
    let c = parse_ok(
        "ignore uid;\nignore gid mod;\nignore;\nport 4000;\n\
         nossl * *;\ndatabase /var/lib/csync2/x.db;\ntempdir /tmp;\nlock-timeout 30;\nno-cygwin-lowercase;\n",
    );
    assert_eq!(c.ignore, Ignore { uid: true, gid: true, mode: true });
    assert_eq!(c.port, 4000);
    let warnings: Vec<String> = c.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 5, "{warnings:#?}");
    for (w, (line, word)) in
        warnings.iter().zip([(5, "nossl"), (6, "database"), (7, "tempdir"), (8, "lock-timeout"), (9, "no-cygwin")])
    {
        assert!(w.starts_with(&format!("/etc/snapsync.cfg:{line}:1: {word}")), "{w}");
        assert!(!w.contains('\n'));
    }
    assert!(c.groups.is_empty());
    // An empty config is valid, and so is a nossl with quoted arguments.
    assert_eq!(parse_ok("# nothing\n").groups.len(), 0);
    assert!(err("nossl a;").contains("expected the destination host pattern of nossl, found ';'"));
}

#[test]
fn host_entries() {
    let c = parse_ok(
        "group g { key /k; host Plain (Slave) a@10.1.1.1 b@10.1.1.2:4001 c@[::1]:4002 (d@[fe80::1]) e@fe80::2; }",
    );
    let hosts = &c.groups[0].hosts;
    let e = |name: &str, addr: Option<&str>, port: Option<u16>, receive_only: bool| HostEntry {
        name: name.into(),
        addr: addr.map(Into::into),
        port,
        receive_only,
    };
    assert_eq!(
        hosts,
        &vec![
            e("plain", None, None, false),
            e("slave", None, None, true),
            e("a", Some("10.1.1.1"), None, false),
            e("b", Some("10.1.1.2"), Some(4001), false),
            e("c", Some("::1"), Some(4002), false),
            e("d", Some("fe80::1"), None, true),
            e("e", Some("fe80::2"), None, false),
        ]
    );
    let r = &c.resolve("SLAVE").unwrap()[0];
    assert!(r.local.receive_only);
    // A host listed twice: the last entry counts, as in csync2.
    let c = parse_ok("group g { key /k; host a (a); }");
    assert!(c.resolve("a").unwrap()[0].local.receive_only);
}

#[test]
fn unnamed_groups_are_numbered() {
    let c = parse_ok("group { key /k; } group x { key /k; } group { key /k; }");
    let names: Vec<&str> = c.groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["group_1", "x", "group_2"]);
}

#[test]
fn quoting_and_comments() {
    let c = parse_ok(
        "group \"my group\" { # comment\n key \"/k\"; include \"/srv/with space\" \"/srv/key\"; host \"host\"; }",
    );
    let g = &c.groups[0];
    assert_eq!(g.name, "my group");
    assert_eq!(g.patterns[0].text, "/srv/with space");
    assert_eq!(g.patterns[1].text, "/srv/key");
    assert_eq!(g.hosts[0].name, "host");
    // `{` sticks to a word, as in csync2: the body never opens.
    assert!(err("group g{ key /k; }").contains("found \"key\"") || err("group g{ key /k; }").contains("keyword"));
}

#[test]
fn prefix_expansion_with_two_hosts() {
    let c = parse_ok(
        "prefix app {\n on node-a: /vol/a/app/;\n on node-*: /vol/other/app;\n}\n\
         group g {\n host node-a node-b;\n key %app%/key;\n include %app%/shared /etc/common;\n \
         exclude %app%/shared/tmp;\n backup-directory %app%/backup;\n \
         action { pattern %app%/shared/conf; exec \"reload\"; }\n}\n",
    );
    let a = &c.resolve("node-a").unwrap()[0];
    let b = &c.resolve("node-b").unwrap()[0];
    let logical = |g: &ResolvedGroup| g.roots.iter().map(|r| r.logical.clone()).collect::<Vec<_>>();
    assert_eq!(logical(a), ["%app%/shared", "/etc/common"]);
    assert_eq!(logical(a), logical(b));
    assert_eq!(a.roots[0].local, Path::new("/vol/a/app/shared"));
    assert_eq!(b.roots[0].local, Path::new("/vol/other/app/shared"));
    assert_eq!(a.key.as_deref(), Some(Path::new("/vol/a/app/key")));
    assert_eq!(b.backup_directory.as_deref(), Some(Path::new("/vol/other/app/backup")));
    assert_eq!(class(a, "/vol/a/app/shared/x"), Class::Included);
    assert_eq!(class(a, "/vol/a/app/shared/tmp/x"), Class::Excluded);
    assert_eq!(class(a, "/vol/other/app/shared/x"), Class::Excluded);
    assert_eq!(class(b, "/vol/other/app/shared/x"), Class::Included);
    assert_eq!(b.actions[0].patterns, ["/vol/other/app/shared/conf"]);
    assert_eq!(b.actions_for(Path::new("/vol/other/app/shared/conf"), false).len(), 1);

    // Logical names are what the two hosts agree on.
    let on_a = Path::new("/vol/a/app/shared/img/x.png");
    let logical_name = a.to_logical(on_a).unwrap();
    assert_eq!(logical_name, Path::new("%app%/shared/img/x.png"));
    assert_eq!(b.to_local(&logical_name).unwrap(), Path::new("/vol/other/app/shared/img/x.png"));
    assert_eq!(a.to_logical(Path::new("/vol/a/app/shared")).unwrap(), Path::new("%app%/shared"));
    assert_eq!(a.to_logical(Path::new("/etc/common/x")).unwrap(), Path::new("/etc/common/x"));
    assert_eq!(a.to_logical(Path::new("/vol/a/app/other")), None);
    assert_eq!(b.to_local(Path::new("%app%/shared/../../etc")), None);
    assert_eq!(b.to_local(Path::new("%app%/elsewhere")), None);

    assert_eq!(c.prefix_path("app", "NODE-B").unwrap().as_deref(), Some("/vol/other/app"));
    // A host with no line for a prefix its group uses cannot resolve.
    let c2 = parse_ok("prefix app { on x: /x; } group g { host x y; key /k; include %app%/s; }");
    let e = c2.resolve("y").unwrap_err();
    insta::assert_snapshot!(e.to_string(), @r#"/etc/snapsync.cfg:1:62: prefix %app% has no `on` line matching host "y""#);
    assert!(c2.resolve("x").is_ok());
}

#[test]
fn config_include_follows_relative_paths() {
    let config = load(&fixture("include/main.cfg")).unwrap();
    assert_eq!(config.files.len(), 3);
    assert_eq!(config.prefixes[0].name, "docroot");
    assert_eq!(config.prefixes[0].location.file, fixture("include/parts/prefixes.cfg"));
    let g = &config.groups[0];
    assert_eq!(g.patterns.len(), 2);
    assert_eq!(g.patterns[1].text, "*.swp");
    assert_eq!(g.patterns[1].location.file, fixture("include/parts/excludes.cfg"));
    let web1 = &config.resolve("web1").unwrap()[0];
    assert_eq!(web1.roots[0].local, Path::new("/srv/www-a"));
    assert_eq!(web1.matcher.classify(Path::new("/srv/www-a/x.swp")), Class::Excluded);
    assert_eq!(config.resolve("web2").unwrap()[0].roots[0].local, Path::new("/srv/www"));
}

#[test]
fn config_include_cycle_is_an_error() {
    let e = load(&fixture("cycle/a.cfg")).unwrap_err();
    let ConfigError::IncludeCycle { location, chain } = &e else {
        panic!("expected an include cycle, got {e}");
    };
    assert_eq!(location.file, fixture("cycle/b.cfg"));
    assert_eq!(location.line, 2);
    assert_eq!(chain.len(), 3);
    assert_eq!(chain.first(), chain.last());
    assert!(e.to_string().contains(" -> "), "{e}");
}

#[test]
fn unreadable_files_are_named() {
    let e = load(Path::new("/nonexistent/snapsync.cfg")).unwrap_err();
    assert!(e.to_string().starts_with("/nonexistent/snapsync.cfg: cannot read config file"), "{e}");
    let e = parse_str("config missing.cfg;", &fixture("x.cfg")).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("x.cfg:1:8: cannot read included config file"), "{msg}");
    assert!(msg.contains("missing.cfg"), "{msg}");
}

#[test]
fn include_depth_is_limited() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..=12 {
        std::fs::write(dir.path().join(format!("{i}.cfg")), format!("config {}.cfg;\n", i + 1)).unwrap();
    }
    std::fs::write(dir.path().join("13.cfg"), "").unwrap();
    let e = load(&dir.path().join("0.cfg")).unwrap_err();
    assert!(matches!(e, ConfigError::IncludeTooDeep { .. }), "{e}");
    // Ten levels, as csync2 allows, are fine.
    let e = load(&dir.path().join("3.cfg"));
    assert!(e.is_ok(), "{e:?}");
}

#[test]
fn several_files_after_one_config_and_absolute_names() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.cfg"), "ignore uid;").unwrap();
    std::fs::write(dir.path().join("b.cfg"), "ignore gid;").unwrap();
    let main = dir.path().join("main.cfg");
    let src = format!("config a.cfg {}; port 1;", dir.path().join("b.cfg").display());
    std::fs::write(&main, &src).unwrap();
    let c = load(&main).unwrap();
    assert!(c.ignore.uid && c.ignore.gid && !c.ignore.mode);
    assert_eq!(c.port, 1);
}

#[test]
fn not_utf8_is_reported_with_its_location() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.cfg");
    std::fs::write(&path, b"# ok\nab\xff").unwrap();
    let e = load(&path).unwrap_err();
    assert_eq!(e.location().map(|l| (l.line, l.column)), Some((2, 3)));
}

#[test]
fn config_paths() {
    let etc = Path::new("/etc");
    assert_eq!(config_path(etc, None).unwrap(), Path::new("/etc/snapsync.cfg"));
    assert_eq!(config_path(etc, Some("web2")).unwrap(), Path::new("/etc/snapsync_web2.cfg"));
    for bad in ["", "Web", "a_b", "../x"] {
        assert!(config_path(etc, Some(bad)).is_err(), "{bad}");
    }
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the text, parsing returns (no panic), and every error
        /// that points into the text names a line that exists.
        #[test]
        fn parsing_never_panics(src in "[ -~\n\t]{0,200}") {
            match parse_str(&src, Path::new("p.cfg")) {
                Ok(_) => {}
                Err(e) => {
                    if let Some(l) = e.location() {
                        prop_assert!(l.line >= 1 && l.line as usize <= src.lines().count() + 1);
                        prop_assert!(l.column >= 1);
                    }
                }
            }
        }

        /// Token-shaped input exercises the grammar more deeply.
        #[test]
        fn token_soup_never_panics(words in proptest::collection::vec(
            prop_oneof![
                Just("group"), Just("g"), Just("{"), Just("}"), Just(";"), Just("host"), Just("a"),
                Just("("), Just(")"), Just("@"), Just("b:1"), Just("key"), Just("/k"), Just("include"),
                Just("%p%/x"), Just("prefix"), Just("p"), Just("on"), Just("*"), Just(":"), Just("/x"),
                Just("action"), Just("exec"), Just("\"c %%\""), Just("compare"), Just("auto"), Just("left"),
            ],
            0..40,
        )) {
            let src = words.join(" ");
            if let Ok(c) = parse_str(&src, Path::new("p.cfg")) {
                let _ = c.resolve("a");
            }
        }
    }
}
