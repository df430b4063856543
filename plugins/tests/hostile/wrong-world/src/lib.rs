//! Hostile: a well-formed component of a world that is not one of allot's:
//! it exports `greet`, imports nothing of `allot:plugin`. The host must
//! refuse it at upload.

wit_bindgen::generate!({
    inline: "
        package hostile:other;

        world other {
            export greet: func(name: string) -> string;
        }
    ",
});

struct Other;

impl Guest for Other {
    fn greet(name: String) -> String {
        format!("hello, {name}")
    }
}

export!(Other);
