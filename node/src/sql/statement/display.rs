//! Statements printed back as SQL that parses to them again.

use std::fmt;

use super::Statement;

/// A name part, quoted: names keep the case they were parsed with.
struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.0.replace('"', "\"\""))
    }
}

/// A name of one to three parts.
struct Dotted<'a>(&'a [String]);

impl fmt::Display for Dotted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            write!(f, "{}", Quoted(p))?;
        }
        Ok(())
    }
}

/// The statement as SQL that parses back to it.
impl fmt::Display for Statement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let if_not_exists = |b: bool| if b { "IF NOT EXISTS " } else { "" };
        let if_exists = |b: bool| if b { "IF EXISTS " } else { "" };
        match self {
            Statement::UseHive(h) => write!(f, "USE HIVE {}", Quoted(h)),
            Statement::UseBox(n) => write!(f, "USE BOX {}", Dotted(n)),
            Statement::ShowHives => f.write_str("SHOW HIVES"),
            Statement::ShowBoxes(None) => f.write_str("SHOW BOXES"),
            Statement::ShowBoxes(Some(h)) => write!(f, "SHOW BOXES IN {}", Quoted(h)),
            Statement::ShowFrames(None) => f.write_str("SHOW FRAMES"),
            Statement::ShowFrames(Some(n)) => write!(f, "SHOW FRAMES IN {}", Dotted(n)),
            Statement::Describe(n) => write!(f, "DESCRIBE {}", Dotted(n)),
            Statement::CreateHive {
                name,
                if_not_exists: e,
            } => write!(f, "CREATE HIVE {}{}", if_not_exists(*e), Quoted(name)),
            Statement::CreateBox {
                name,
                if_not_exists: e,
            } => write!(f, "CREATE BOX {}{}", if_not_exists(*e), Dotted(name)),
            Statement::CreateFrame {
                name,
                columns,
                partition_by,
                if_not_exists: e,
            } => {
                write!(f, "CREATE FRAME {}{} (", if_not_exists(*e), Dotted(name))?;
                for (i, c) in columns.iter().enumerate() {
                    let sep = if i > 0 { ", " } else { "" };
                    write!(f, "{sep}{} {}", Quoted(&c.name), c.spelt)?;
                }
                f.write_str(")")?;
                if !partition_by.is_empty() {
                    let cols: Vec<String> =
                        partition_by.iter().map(|c| Quoted(c).to_string()).collect();
                    write!(f, " PARTITIONED BY ({})", cols.join(", "))?;
                }
                Ok(())
            }
            Statement::DropFrame { name, if_exists: e } => {
                write!(f, "DROP FRAME {}{}", if_exists(*e), Dotted(name))
            }
            Statement::DropHive {
                name,
                if_exists: e,
                cascade,
            } => {
                let how = if *cascade { " CASCADE" } else { "" };
                write!(f, "DROP HIVE {}{}{how}", if_exists(*e), Quoted(name))
            }
            Statement::DropBox {
                name,
                if_exists: e,
                cascade,
            } => {
                let how = if *cascade { " CASCADE" } else { "" };
                write!(f, "DROP BOX {}{}{how}", if_exists(*e), Dotted(name))
            }
            Statement::Insert {
                name,
                columns,
                source,
                overwrite,
            } => {
                let how = if *overwrite {
                    "OVERWRITE TABLE"
                } else {
                    "INTO"
                };
                write!(f, "INSERT {how} {}", Dotted(name))?;
                if !columns.is_empty() {
                    let cols: Vec<String> = columns.iter().map(|c| Quoted(c).to_string()).collect();
                    write!(f, " ({})", cols.join(", "))?;
                }
                write!(f, " {source}")
            }
            Statement::AddColumns {
                name,
                columns,
                if_not_exists: e,
            } => {
                write!(f, "ALTER FRAME {}", Dotted(name))?;
                for (i, c) in columns.iter().enumerate() {
                    let sep = if i > 0 { "," } else { "" };
                    write!(
                        f,
                        "{sep} ADD COLUMN {}{} {}",
                        if_not_exists(*e),
                        Quoted(&c.name),
                        c.spelt
                    )?;
                }
                Ok(())
            }
            Statement::Delete { name, predicate } => {
                write!(f, "DELETE FROM {}", Dotted(name))?;
                predicate.iter().try_for_each(|p| write!(f, " WHERE {p}"))
            }
            Statement::Update {
                name,
                assignments,
                predicate,
            } => {
                write!(f, "UPDATE {} SET ", Dotted(name))?;
                for (i, (column, value)) in assignments.iter().enumerate() {
                    let sep = if i > 0 { ", " } else { "" };
                    write!(f, "{sep}{} = {value}", Quoted(column))?;
                }
                predicate.iter().try_for_each(|p| write!(f, " WHERE {p}"))
            }
            Statement::CreateFunction {
                name,
                source,
                replace,
            } => write!(
                f,
                "CREATE {}FUNCTION {} AS '{}' LANGUAGE wasm",
                if *replace { "OR REPLACE " } else { "" },
                Quoted(name),
                source.replace('\'', "''")
            ),
            Statement::DropFunction { name, if_exists: e } => {
                write!(f, "DROP FUNCTION {}{}", if_exists(*e), Quoted(name))
            }
            Statement::Query(q) => write!(f, "{q}"),
        }
    }
}
