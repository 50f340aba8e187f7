//! A well-formed component that implements some other world.

#![allow(unsafe_code, missing_docs)]

wit_bindgen::generate!({
    inline: "
        package other:greeter@1.0.0;
        world greeter {
            export greet: func(name: string) -> string;
        }
    ",
});

struct Greeter;

impl Guest for Greeter {
    fn greet(name: String) -> String {
        format!("hello, {name}")
    }
}

export!(Greeter);
