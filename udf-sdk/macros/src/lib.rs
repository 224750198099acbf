//! `#[udf]`: turns a plain Rust function into an Apiary scalar UDF component.

use proc_macro::TokenStream;
use quote::{format_ident, quote};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{Expr, FnArg, ItemFn, Lit, Meta, ReturnType, Token, parse_macro_input};

/// Export a function as the component's UDF.
///
/// ```ignore
/// #[apiary_udf::udf]
/// fn celsius_to_f(c: f64) -> f64 { c * 9.0 / 5.0 + 32.0 }
/// ```
///
/// Arguments are `i64`, `f64`, `bool`, `&str`, `Timestamp` or an `Option` of one (a plain
/// type means a null input gives a null output without calling the function); the result is
/// one of those, `String`, or a `Result<_, E: Display>` whose error fails the query.
/// Options: `#[udf(name = "sql_name")]`, `#[udf(volatile)]` for functions whose result may
/// differ between calls with the same input.
#[proc_macro_attribute]
pub fn udf(attr: TokenStream, item: TokenStream) -> TokenStream {
    let func = parse_macro_input!(item as ItemFn);
    let options = match Punctuated::<Meta, Token![,]>::parse_terminated.parse(attr) {
        Ok(o) => o,
        Err(e) => return e.to_compile_error().into(),
    };
    let mut name = func.sig.ident.to_string();
    let mut deterministic = true;
    for option in options {
        match option {
            Meta::Path(p) if p.is_ident("volatile") => deterministic = false,
            Meta::NameValue(nv) if nv.path.is_ident("name") => match nv.value {
                Expr::Lit(syn::ExprLit {
                    lit: Lit::Str(s), ..
                }) => name = s.value(),
                other => {
                    return syn::Error::new_spanned(other, "name takes a string")
                        .to_compile_error()
                        .into();
                }
            },
            other => {
                return syn::Error::new_spanned(other, "expected `name = \"...\"` or `volatile`")
                    .to_compile_error()
                    .into();
            }
        }
    }

    let mut arg_types = Vec::new();
    for input in &func.sig.inputs {
        match input {
            FnArg::Typed(t) => arg_types.push((*t.ty).clone()),
            FnArg::Receiver(r) => {
                return syn::Error::new_spanned(r, "a UDF is a free function")
                    .to_compile_error()
                    .into();
            }
        }
    }
    let ret = match &func.sig.output {
        ReturnType::Type(_, t) => (**t).clone(),
        ReturnType::Default => {
            return syn::Error::new_spanned(&func.sig, "a UDF returns a value")
                .to_compile_error()
                .into();
        }
    };

    let ident = &func.sig.ident;
    let vars: Vec<_> = (0..arg_types.len())
        .map(|i| format_ident!("a{}", i))
        .collect();
    let views: Vec<_> = (0..arg_types.len())
        .map(|i| format_ident!("view{}", i))
        .collect();
    let valids: Vec<_> = (0..arg_types.len())
        .map(|i| format_ident!("valid{}", i))
        .collect();
    let indices = 0..arg_types.len();
    let types = &arg_types;
    let expanded = quote! {
        #func

        const _: () = {
            struct ApiaryUdf;

            impl ::apiary_udf::Guest for ApiaryUdf {
                fn describe() -> ::apiary_udf::Signature {
                    ::apiary_udf::Signature {
                        name: #name.to_string(),
                        args: vec![#(<#types as ::apiary_udf::Arg<'_>>::TYPE),*],
                        returns: <#ret as ::apiary_udf::Ret>::TYPE,
                        deterministic: #deterministic,
                    }
                }

                fn invoke(
                    args: Vec<::apiary_udf::Column>,
                    rows: u32,
                ) -> Result<::apiary_udf::Column, String> {
                    let rows = rows as usize;
                    ::apiary_udf::check_args(
                        &args,
                        &[#(<#types as ::apiary_udf::Arg<'_>>::TYPE),*],
                        rows,
                    )?;
                    #(
                        let #views = <#types as ::apiary_udf::Arg<'_>>::view(&args[#indices]);
                        let #valids = ::apiary_udf::validity(&args[#indices]);
                    )*
                    let mut out = <#ret as ::apiary_udf::Ret>::builder(rows);
                    // No nulls in: one straight loop the compiler can vectorise.
                    if true #(&& #valids.is_none())* {
                        <#ret as ::apiary_udf::Ret>::extend(
                            &mut out,
                            (0..rows).map(|i| {
                                #ident(#(
                                    <#types as ::apiary_udf::Arg<'_>>::get(#views, i, true)
                                        .expect("a valid value"),
                                )*)
                            }),
                        )?;
                        return Ok(<#ret as ::apiary_udf::Ret>::finish(out));
                    }
                    for i in 0..rows {
                        #(
                            let Some(#vars) = <#types as ::apiary_udf::Arg<'_>>::get(
                                #views,
                                i,
                                ::apiary_udf::is_valid(#valids, i),
                            ) else {
                                <#ret as ::apiary_udf::Ret>::push_null(&mut out);
                                continue;
                            };
                        )*
                        ::apiary_udf::Ret::push(#ident(#(#vars),*), &mut out)?;
                    }
                    Ok(<#ret as ::apiary_udf::Ret>::finish(out))
                }
            }

            ::apiary_udf::export_raw!(ApiaryUdf with_types_in ::apiary_udf::bindings);
        };
    };
    expanded.into()
}
