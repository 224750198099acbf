//! SQL parsed once into an AST: Apiary's own statements (USE, SHOW, DESCRIBE, CREATE/DROP
//! of hives, boxes, frames and functions, INSERT, DELETE, UPDATE) are extensions read from
//! sqlparser's tokens, everything else is sqlparser's own AST for DataFusion to plan. A script
//! is tokenised once and split at its top-level semicolons; every statement prints back as
//! SQL (`Display`).

use std::fmt;

use datafusion::sql::sqlparser::ast;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer, Word};

pub use self::dialect::ApiaryDialect;
use crate::error::{Error, Result};
use crate::frames::Column;

/// A name as written: one, two or three parts.
pub type Name = Vec<String>;

#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    UseHive(String),
    UseBox(Name),
    ShowHives,
    ShowBoxes(Option<String>),
    ShowFrames(Option<Name>),
    Describe(Name),
    CreateHive {
        name: String,
        if_not_exists: bool,
    },
    CreateBox {
        name: Name,
        if_not_exists: bool,
    },
    CreateFrame {
        name: Name,
        columns: Vec<Column>,
        partition_by: Vec<String>,
        if_not_exists: bool,
    },
    DropFrame {
        name: Name,
        if_exists: bool,
    },
    DropHive {
        name: String,
        if_exists: bool,
        cascade: bool,
    },
    DropBox {
        name: Name,
        if_exists: bool,
        cascade: bool,
    },
    Insert {
        name: Name,
        columns: Vec<String>,
        /// The SELECT or VALUES that produces the rows.
        source: Box<ast::Query>,
        overwrite: bool,
    },
    /// `ALTER FRAME frame ADD COLUMN col type, ...`
    AddColumns {
        name: Name,
        columns: Vec<Column>,
        if_not_exists: bool,
    },
    /// `DELETE FROM frame [WHERE predicate]`
    Delete {
        name: Name,
        predicate: Option<ast::Expr>,
    },
    /// `UPDATE frame SET column = value, ... [WHERE predicate]`
    Update {
        name: Name,
        assignments: Vec<(String, ast::Expr)>,
        predicate: Option<ast::Expr>,
    },
    /// `CREATE [OR REPLACE] FUNCTION name AS 'path' [LANGUAGE wasm]`
    CreateFunction {
        name: String,
        source: String,
        replace: bool,
    },
    DropFunction {
        name: String,
        if_exists: bool,
    },
    /// Anything else: a query (or statement) for DataFusion.
    Query(Box<ast::Statement>),
}

impl Statement {
    /// How the SQL reference (`docs/sql.md`) names the statement; `None` for DataFusion's own.
    pub fn syntax(&self) -> Option<&'static str> {
        Some(match self {
            Statement::UseHive(_) => "USE HIVE",
            Statement::UseBox(_) => "USE BOX",
            Statement::ShowHives => "SHOW HIVES",
            Statement::ShowBoxes(_) => "SHOW BOXES",
            Statement::ShowFrames(_) => "SHOW FRAMES",
            Statement::Describe(_) => "DESCRIBE",
            Statement::CreateHive { .. } => "CREATE HIVE",
            Statement::CreateBox { .. } => "CREATE BOX",
            Statement::CreateFrame { .. } => "CREATE FRAME",
            Statement::DropFrame { .. } => "DROP FRAME",
            Statement::DropHive { .. } => "DROP HIVE",
            Statement::DropBox { .. } => "DROP BOX",
            Statement::Insert {
                overwrite: false, ..
            } => "INSERT INTO",
            Statement::Insert {
                overwrite: true, ..
            } => "INSERT OVERWRITE",
            Statement::AddColumns { .. } => "ALTER FRAME",
            Statement::Delete { .. } => "DELETE",
            Statement::Update { .. } => "UPDATE",
            Statement::CreateFunction { .. } => "FUNCTION name AS",
            Statement::DropFunction { .. } => "DROP FUNCTION",
            Statement::Query(_) => return None,
        })
    }
}

/// A sqlparser error as ours: a syntax error, with what it expected.
fn syntax(e: impl fmt::Display) -> Error {
    let msg = e.to_string();
    let msg = msg.strip_prefix("sql parser error: ").unwrap_or(&msg);
    Error::invalid(format!("SQL syntax error: {msg}"))
}

/// Parse a `;`-separated script: tokenised once, each statement parsed once.
pub fn parse_script(sql: &str) -> Result<Vec<Statement>> {
    let tokens = Tokenizer::new(&ApiaryDialect, sql)
        .tokenize_with_location()
        .map_err(syntax)?;
    tokens
        .split(|t| t.token == Token::SemiColon)
        .filter(|s| s.iter().any(|t| !matches!(t.token, Token::Whitespace(_))))
        .map(|s| parse_tokens(s.to_vec()))
        .collect()
}

/// Parse one statement.
pub fn parse(sql: &str) -> Result<Statement> {
    let mut all = parse_script(sql)?;
    match all.len() {
        0 => Err(Error::invalid("empty SQL statement")),
        1 => Ok(all.remove(0)),
        n => Err(Error::invalid(format!(
            "expected one SQL statement, found {n}"
        ))),
    }
}

/// A cursor over the significant tokens of one statement.
struct Cursor {
    /// Every token of the statement, for sqlparser's own parser.
    all: Vec<TokenWithSpan>,
    toks: Vec<Token>,
    pos: usize,
}

impl Cursor {
    fn new(all: Vec<TokenWithSpan>) -> Cursor {
        let toks = all
            .iter()
            .map(|t| t.token.clone())
            .filter(|t| !matches!(t, Token::Whitespace(_)))
            .collect();
        Cursor { all, toks, pos: 0 }
    }

    /// The statement as written.
    fn text(&self) -> String {
        self.all
            .iter()
            .map(|t| t.token.to_string())
            .collect::<String>()
            .trim()
            .to_string()
    }

    /// Its first `n` words, in capitals (for messages).
    fn first_words(&self, n: usize) -> String {
        self.toks
            .iter()
            .take(n)
            .map(|t| t.to_string().to_ascii_uppercase())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The whole statement as sqlparser's AST.
    fn sqlparser(self) -> Result<ast::Statement> {
        let mut p = Parser::new(&ApiaryDialect).with_tokens_with_locations(self.all);
        let stmt = p.parse_statement().map_err(syntax)?;
        match p.peek_token().token {
            Token::EOF => Ok(stmt),
            t => Err(syntax(ParserError::ParserError(format!(
                "expected end of statement, found {t}"
            )))),
        }
    }

    fn peek(&self) -> Option<&Token> {
        self.toks.get(self.pos)
    }

    fn at_end(&self) -> bool {
        self.pos >= self.toks.len()
    }

    /// Consume the keyword if it is next (unquoted, any case).
    fn keyword(&mut self, kw: &str) -> bool {
        match self.peek() {
            Some(Token::Word(Word {
                value,
                quote_style: None,
                ..
            })) if value.eq_ignore_ascii_case(kw) => {
                self.pos += 1;
                true
            }
            _ => false,
        }
    }

    fn keywords(&mut self, kws: &[&str]) -> bool {
        let start = self.pos;
        if kws.iter().all(|k| self.keyword(k)) {
            true
        } else {
            self.pos = start;
            false
        }
    }

    fn token(&mut self, t: &Token) -> bool {
        if self.peek() == Some(t) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, t: &Token, what: &str) -> Result<()> {
        if self.token(t) {
            Ok(())
        } else {
            Err(self.error(what))
        }
    }

    fn error(&self, expected: &str) -> Error {
        let found = self
            .peek()
            .map(|t| format!("found {t}"))
            .unwrap_or_else(|| "found end of statement".into());
        Error::invalid(format!("SQL syntax error: expected {expected}, {found}"))
    }

    /// An identifier: unquoted names fold to lower case (as DataFusion does); quoted ones keep
    /// their case.
    fn ident(&mut self, what: &str) -> Result<String> {
        match self.peek() {
            Some(Token::Word(w)) => {
                let v = if w.quote_style.is_some() {
                    w.value.clone()
                } else {
                    w.value.to_ascii_lowercase()
                };
                self.pos += 1;
                Ok(v)
            }
            _ => Err(self.error(what)),
        }
    }

    fn name(&mut self, what: &str) -> Result<Name> {
        let mut parts = vec![self.ident(what)?];
        while self.token(&Token::Period) {
            parts.push(self.ident(what)?);
        }
        if parts.len() > 3 {
            return Err(Error::invalid(format!(
                "name {} has more than three parts (hive.box.frame)",
                parts.join(".")
            )));
        }
        Ok(parts)
    }

    /// `CASCADE` (drop what it holds too) or `RESTRICT` (the default: only when empty).
    fn cascade(&mut self) -> bool {
        if self.keyword("CASCADE") {
            return true;
        }
        let _ = self.keyword("RESTRICT");
        false
    }

    /// `name type`: the type runs to the next top-level comma or closing parenthesis.
    fn column(&mut self) -> Result<Column> {
        let col = self.ident("a column name")?;
        let mut type_words = Vec::new();
        let mut depth = 0;
        while let Some(t) = self.peek() {
            match t {
                Token::Comma | Token::RParen if depth == 0 => break,
                Token::LParen => depth += 1,
                Token::RParen => depth -= 1,
                _ => {}
            }
            type_words.push(t.to_string());
            self.pos += 1;
        }
        let mut type_name = type_words.join(" ").replace(" ( ", "(").replace(" )", ")");
        for suffix in [" NOT NULL", " NULL"] {
            if type_name.to_ascii_uppercase().ends_with(suffix) {
                type_name.truncate(type_name.len() - suffix.len());
            }
        }
        if type_name.is_empty() {
            return Err(Error::invalid(format!("column {col} has no type")));
        }
        Column::new(&col, &type_name)
    }

    fn end(&self) -> Result<()> {
        if self.at_end() {
            Ok(())
        } else {
            Err(self.error("end of statement"))
        }
    }
}

fn one_part(name: Name, what: &str) -> Result<String> {
    if name.len() == 1 {
        Ok(name.into_iter().next().expect("one part"))
    } else {
        Err(Error::invalid(format!(
            "a {what} name has one part, got {}",
            name.join(".")
        )))
    }
}

/// Parse one statement's tokens.
fn parse_tokens(tokens: Vec<TokenWithSpan>) -> Result<Statement> {
    let mut c = Cursor::new(tokens);
    if c.at_end() {
        return Err(Error::invalid("empty SQL statement"));
    }
    let stmt = if c.keyword("USE") {
        if c.keyword("HIVE") || c.keyword("DATABASE") || c.keyword("CATALOG") {
            Statement::UseHive(one_part(c.name("a hive name")?, "hive")?)
        } else if c.keyword("BOX") || c.keyword("SCHEMA") {
            let n = c.name("a box name")?;
            if n.len() > 2 {
                return Err(Error::invalid("USE BOX takes box or hive.box"));
            }
            Statement::UseBox(n)
        } else {
            // Plain `USE x` selects a hive, `USE h.b` a hive and a box.
            let n = c.name("HIVE, BOX or a name")?;
            match n.len() {
                1 => Statement::UseHive(n.into_iter().next().expect("one part")),
                2 => Statement::UseBox(n),
                _ => return Err(Error::invalid("USE takes hive or hive.box")),
            }
        }
    } else if c.keyword("SHOW") {
        if c.keyword("HIVES") || c.keyword("DATABASES") {
            Statement::ShowHives
        } else if c.keyword("BOXES") || c.keyword("SCHEMAS") {
            let h = if c.keyword("IN") || c.keyword("FROM") {
                Some(one_part(c.name("a hive name")?, "hive")?)
            } else {
                None
            };
            Statement::ShowBoxes(h)
        } else if c.keyword("FRAMES") || c.keyword("TABLES") {
            let n = if c.keyword("IN") || c.keyword("FROM") {
                let n = c.name("hive.box or box")?;
                if n.len() > 2 {
                    return Err(Error::invalid("SHOW FRAMES IN takes hive.box or box"));
                }
                Some(n)
            } else {
                None
            };
            Statement::ShowFrames(n)
        } else {
            return Err(c.error("HIVES, BOXES or FRAMES (or DATABASES, SCHEMAS, TABLES)"));
        }
    } else if c.keyword("DESCRIBE") || c.keyword("DESC") {
        let _ = c.keyword("FRAME") || c.keyword("TABLE");
        Statement::Describe(c.name("a frame name")?)
    } else if c.keyword("CREATE") {
        return parse_create(c);
    } else if c.keyword("DROP") {
        if c.keyword("FUNCTION") {
            let if_exists = c.keywords(&["IF", "EXISTS"]);
            Statement::DropFunction {
                name: one_part(c.name("a function name")?, "function")?,
                if_exists,
            }
        } else if c.keyword("TABLE") || c.keyword("FRAME") {
            let if_exists = c.keywords(&["IF", "EXISTS"]);
            Statement::DropFrame {
                name: c.name("a frame name")?,
                if_exists,
            }
        } else if c.keyword("HIVE") || c.keyword("DATABASE") || c.keyword("CATALOG") {
            let if_exists = c.keywords(&["IF", "EXISTS"]);
            let name = one_part(c.name("a hive name")?, "hive")?;
            Statement::DropHive {
                name,
                if_exists,
                cascade: c.cascade(),
            }
        } else if c.keyword("BOX") || c.keyword("SCHEMA") {
            let if_exists = c.keywords(&["IF", "EXISTS"]);
            let name = c.name("a box name")?;
            if name.len() > 2 {
                return Err(Error::invalid("a box name is box or hive.box"));
            }
            Statement::DropBox {
                name,
                if_exists,
                cascade: c.cascade(),
            }
        } else {
            return Err(Error::unsupported(format!(
                "{} is not supported: only DROP HIVE, DROP BOX, DROP FRAME (or TABLE) and DROP \
                 FUNCTION are",
                c.first_words(2)
            )));
        }
    } else if c.keyword("INSERT") {
        return dml::parse_insert(c.sqlparser()?);
    } else if c.keyword("DELETE") {
        return dml::parse_delete(c.sqlparser()?);
    } else if c.keyword("UPDATE") {
        return dml::parse_update(c.sqlparser()?);
    } else if c.keyword("ALTER") {
        if c.keyword("TABLE") || c.keyword("FRAME") {
            return parse_alter(c);
        }
        return Err(Error::unsupported(format!(
            "{} is not supported: only ALTER FRAME (or TABLE) ... ADD COLUMN is",
            c.first_words(2)
        )));
    } else if ["MERGE", "TRUNCATE"].iter().any(|k| c.keyword(k)) {
        return Err(Error::unsupported(format!(
            "{} is not supported yet: frames take appends (INSERT) and overwrites (INSERT OVERWRITE); statement: {}",
            c.first_words(1),
            c.text()
        )));
    } else {
        return Ok(Statement::Query(Box::new(c.sqlparser()?)));
    };
    c.end()?;
    Ok(stmt)
}

/// `ALTER FRAME|TABLE name ADD [COLUMN] [IF NOT EXISTS] col type [, ADD ...]`
fn parse_alter(mut c: Cursor) -> Result<Statement> {
    let name = c.name("a frame name")?;
    let mut columns = Vec::new();
    let mut if_not_exists = false;
    loop {
        if !c.keyword("ADD") {
            let Some(found) = c.peek() else {
                return Err(c.error("ADD COLUMN"));
            };
            return Err(Error::unsupported(format!(
                "ALTER FRAME {}: {} is not supported, only ADD COLUMN is",
                name.join("."),
                found.to_string().to_ascii_uppercase()
            )));
        }
        let _ = c.keyword("COLUMN");
        if_not_exists |= c.keywords(&["IF", "NOT", "EXISTS"]);
        columns.push(c.column()?);
        if !c.token(&Token::Comma) {
            break;
        }
    }
    c.end()?;
    Ok(Statement::AddColumns {
        name,
        columns,
        if_not_exists,
    })
}

fn parse_create(mut c: Cursor) -> Result<Statement> {
    let replace = c.keywords(&["OR", "REPLACE"]);
    if replace || c.keyword("FUNCTION") {
        if replace && !c.keyword("FUNCTION") {
            return Err(c.error("FUNCTION (OR REPLACE is for functions only)"));
        }
        return parse_create_function(c, replace);
    }
    if c.keyword("HIVE") || c.keyword("DATABASE") || c.keyword("CATALOG") {
        let if_not_exists = c.keywords(&["IF", "NOT", "EXISTS"]);
        let name = one_part(c.name("a hive name")?, "hive")?;
        c.end()?;
        return Ok(Statement::CreateHive {
            name,
            if_not_exists,
        });
    }
    if c.keyword("BOX") || c.keyword("SCHEMA") {
        let if_not_exists = c.keywords(&["IF", "NOT", "EXISTS"]);
        let name = c.name("a box name")?;
        if name.len() > 2 {
            return Err(Error::invalid("a box name is box or hive.box"));
        }
        c.end()?;
        return Ok(Statement::CreateBox {
            name,
            if_not_exists,
        });
    }
    if !(c.keyword("TABLE") || c.keyword("FRAME")) {
        let what = c
            .peek()
            .map(|t| t.to_string().to_ascii_uppercase())
            .unwrap_or_default();
        return Err(Error::unsupported(format!(
            "CREATE {what} is not supported: only CREATE HIVE|DATABASE, CREATE BOX|SCHEMA and CREATE TABLE|FRAME are"
        )));
    }
    let if_not_exists = c.keywords(&["IF", "NOT", "EXISTS"]);
    let name = c.name("a frame name")?;
    if c.keyword("AS") {
        return Err(Error::unsupported(
            "CREATE TABLE ... AS SELECT is not supported yet: CREATE TABLE with columns, then INSERT INTO ... SELECT",
        ));
    }
    c.expect(&Token::LParen, "( and the column list")?;
    let mut columns = Vec::new();
    loop {
        columns.push(c.column()?);
        if c.token(&Token::Comma) {
            continue;
        }
        c.expect(&Token::RParen, ", or )")?;
        break;
    }
    let mut partition_by = Vec::new();
    if c.keywords(&["PARTITIONED", "BY"]) || c.keywords(&["PARTITION", "BY"]) {
        c.expect(&Token::LParen, "( and partition columns")?;
        loop {
            partition_by.push(c.ident("a partition column")?);
            if !c.token(&Token::Comma) {
                break;
            }
        }
        c.expect(&Token::RParen, ")")?;
    }
    c.end()?;
    Ok(Statement::CreateFrame {
        name,
        columns,
        partition_by,
        if_not_exists,
    })
}

/// `name AS 'path-or-file-uri' [LANGUAGE wasm]`, after `CREATE [OR REPLACE] FUNCTION`.
fn parse_create_function(mut c: Cursor, replace: bool) -> Result<Statement> {
    let name = one_part(c.name("a function name")?, "function")?;
    if !c.keyword("AS") {
        return Err(c.error("AS '<path to the .wasm component>'"));
    }
    let source = match c.peek() {
        Some(Token::SingleQuotedString(s)) => s.clone(),
        _ => return Err(c.error("a quoted path, e.g. AS '/path/udf.wasm'")),
    };
    c.pos += 1;
    if c.keyword("LANGUAGE") {
        let language = c.ident("a language")?;
        if !language.eq_ignore_ascii_case("wasm") {
            return Err(Error::unsupported(format!(
                "LANGUAGE {language} is not supported: functions are WebAssembly components (LANGUAGE wasm)"
            )));
        }
    }
    c.end()?;
    Ok(Statement::CreateFunction {
        name,
        source,
        replace,
    })
}

mod dialect;
mod display;
mod dml;
#[cfg(test)]
mod tests;
